"""Stage-B network modules: shapes, gradients, soft-argmax decoding, coordinate conventions."""

from __future__ import annotations

import pytest
import torch

from synthforge import losses
from synthforge.models import DenseHead, HourglassLandmarkHead, MultiTaskNet, UNetTrunk, soft_argmax
from synthforge.models.heads import heatmap_to_image, image_to_heatmap


def _tiny_net(normal: bool = False) -> MultiTaskNet:
    torch.manual_seed(0)
    f = 8
    return MultiTaskNet(
        UNetTrunk("resnet18", 3, (16, 8, 8), f),
        DenseHead(f, 20, 8, 1),
        DenseHead(f, 1, 8, 1, output_scale=0.1),
        HourglassLandmarkHead(f, 68, width=16, num_stacks=2, hourglass_depth=2),
        normal_head=DenseHead(f, 3, 8, 0, activation="normalize") if normal else None,
    )


def test_output_shapes() -> None:
    net = _tiny_net(normal=True)
    out = net(torch.rand(2, 3, 64, 64))
    assert out.seg.shape == (2, 20, 64, 64)
    assert out.depth.shape == (2, 1, 64, 64)
    assert out.features.shape == (2, 8, 64, 64)
    assert len(out.heatmaps) == 2 and all(h.shape == (2, 68, 16, 16) for h in out.heatmaps)
    assert len(out.landmark_stacks) == 2
    assert out.landmarks.shape == (2, 68, 2)
    assert torch.equal(out.landmarks, out.landmark_stacks[-1])
    assert out.normal is not None and torch.allclose(out.normal.norm(dim=1), torch.ones(2, 64, 64), atol=1e-4)
    assert out.uv is None
    # landmarks lie inside the crop: soft-argmax is a convex combination of heatmap-cell centres
    assert out.landmarks.min() >= 1.5 - 1e-4 and out.landmarks.max() <= 64 - 2.5 + 1e-4


def test_channels_last_gives_the_same_outputs_and_gradients() -> None:
    # float64, so that the comparison sees layout mistakes, not float32 summation order amplified by BatchNorm
    ref, cl = _tiny_net(normal=True).double(), _tiny_net(normal=True).double()
    cl.load_state_dict(ref.state_dict())
    cl.channels_last = True
    cl.to(memory_format=torch.channels_last)
    assert cl.trunk.unet.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    image = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    outs = []
    for net in (ref, cl):
        out = net(image)
        assert out.seg.is_contiguous() and out.features.is_contiguous()
        (out.seg.square().mean() + out.depth.mean() + out.heatmaps[-1].logsumexp((2, 3)).mean()).backward()
        outs.append(out)
    for name in ("seg", "depth", "landmarks"):
        a, b = getattr(outs[0], name), getattr(outs[1], name)
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)
    grads = zip(ref.parameters(), cl.parameters(), strict=True)
    assert all(torch.allclose(p.grad, q.grad, atol=1e-9, rtol=1e-7) for p, q in grads if p.grad is not None)


def test_upsample_before_concatenation_matches_interpolate() -> None:
    # the dense heads' upsampling hands a channels-last input its gradient in that layout (the fast CPU path); values
    # and gradients are those of the plain interpolation followed by the concatenation
    from synthforge.models.heads import _ChannelsLastGrad, _upsample_to

    torch.manual_seed(0)
    base = torch.rand(2, 6, 5, 7, dtype=torch.float64)
    skip = torch.rand(2, 3, 10, 14, dtype=torch.float64)
    weight = torch.rand(2, 9, 10, 14, dtype=torch.float64)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        x = base.clone(memory_format=layout).requires_grad_(True)
        up = _upsample_to(x, skip)
        ref = torch.nn.functional.interpolate(base, size=(10, 14), mode="bilinear", align_corners=False)
        assert torch.equal(up, ref)
        (torch.cat([up, skip.contiguous(memory_format=layout)], 1) * weight).sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)
    # what the upsampling's backward receives: a dense channels-last gradient, not the concatenation's channel slice
    seen = []
    x = base.clone(memory_format=torch.channels_last).requires_grad_(True)
    up = torch.nn.functional.interpolate(x, size=(10, 14), mode="bilinear", align_corners=False)
    up.register_hook(seen.append)
    out = torch.cat([_ChannelsLastGrad.apply(up), skip.contiguous(memory_format=torch.channels_last)], 1)
    (out * weight).sum().backward()
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


def test_every_parameter_gets_a_gradient() -> None:
    net = _tiny_net(normal=True)
    image = torch.rand(2, 3, 64, 64)
    out = net(image)
    target = torch.rand(2, 68, 2) * 60
    hm, co = losses.landmark_losses(out.heatmaps, out.landmark_stacks, target, torch.ones(2, 68, dtype=torch.bool))
    loss = (
        losses.segmentation_loss(out.seg, torch.randint(0, 20, (2, 64, 64)))
        + losses.masked_l1(out.depth, torch.zeros_like(out.depth), torch.ones_like(out.depth, dtype=torch.bool))
        + hm
        + co
        + losses.normal_loss(
            out.normal,
            torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 64, 64),
            torch.ones(2, 1, 64, 64, dtype=torch.bool),
        )
        + losses.affine_consistency_loss(net.trunk, image, out.features)
    )
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_trunk_prunes_unused_encoder_stages() -> None:
    trunk = UNetTrunk("resnet18", 3, (16, 8, 8), 8)
    names = {n.split(".")[2] for n, _ in trunk.named_parameters() if n.startswith("unet.encoder.")}
    assert "layer3" not in names and "layer4" not in names and "layer2" in names


def test_head_channel_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="seg_head"):
        MultiTaskNet(
            UNetTrunk("resnet18", 3, (16, 8, 8), 8),
            DenseHead(4, 20),
            DenseHead(8, 1),
            HourglassLandmarkHead(8, width=8, hourglass_depth=1),
        )


@pytest.mark.parametrize("x0,y0", [(5.3, 7.8), (10.0, 3.25), (2.6, 12.4)])
def test_soft_argmax_recovers_gaussian_peak(x0: float, y0: float) -> None:
    h, w, sigma = 16, 16, 1.0
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    logits = -((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma**2)
    coords, prob = soft_argmax(logits.view(1, 1, h, w))
    assert prob.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert abs(coords[0, 0, 0].item() - x0) < 0.5 and abs(coords[0, 0, 1].item() - y0) < 0.5
    # Gaussian *probability* targets decoded through their log give the same point.
    target = losses.gaussian_targets(torch.tensor([[[x0, y0]]]), h, w, sigma)
    coords2, _ = soft_argmax(target.clamp_min(1e-30).log())
    assert torch.allclose(coords2, coords, atol=1e-3)


def test_heatmap_pixel_convention() -> None:
    # heatmap cell 0 at stride 4 covers input pixels 0..3, whose centre is 1.5; cell 3 covers 12..15 -> 13.5
    c = torch.tensor([[0.0, 3.0]])
    assert torch.allclose(heatmap_to_image(c, 4), torch.tensor([[1.5, 13.5]]))
    assert torch.allclose(image_to_heatmap(heatmap_to_image(c, 4), 4), c)


def test_landmark_loss_is_minimal_at_the_target() -> None:
    target = torch.tensor([[[21.5, 30.0]]])
    th = image_to_heatmap(target, 4)
    good = losses.gaussian_targets(th, 16, 16, 1.0).log()
    bad = losses.gaussian_targets(th + 3, 16, 16, 1.0).log()
    valid = torch.ones(1, 1, dtype=torch.bool)
    kl_good, co_good = losses.landmark_losses([good], [heatmap_to_image(soft_argmax(good)[0], 4)], target, valid)
    kl_bad, co_bad = losses.landmark_losses([bad], [heatmap_to_image(soft_argmax(bad)[0], 4)], target, valid)
    assert kl_good.item() == pytest.approx(0.0, abs=1e-4) and co_good.item() < 0.05
    assert kl_bad.item() > 1.0 and co_bad.item() == pytest.approx(6.0, abs=0.3)


def test_affine_consistency_is_zero_for_an_equivariant_trunk() -> None:
    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    image = torch.rand(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    # identity "trunk" is exactly equivariant: loss ~ 0 (bilinear warps of the same map)
    loss = losses.affine_consistency_loss(Identity(), image, image, generator=g)
    assert loss.item() < 1e-5

    class Shifted(torch.nn.Module):  # not equivariant: a fixed spatial pattern added
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.linspace(0, 1, x.shape[-1]).view(1, 1, 1, -1)

    t = Shifted()
    assert losses.affine_consistency_loss(t, image, t(image), generator=torch.Generator().manual_seed(0)).item() > 0.01


def test_dice_loss_hand_computed_and_ignore() -> None:
    from synthforge.losses import dice_loss

    target = torch.zeros(1, 2, 3, dtype=torch.long)
    target[0, 1, 2] = 255  # ignored pixel: 5 valid pixels of class 0
    logits = torch.zeros(1, 2, 2, 3)
    # probs 0.5 everywhere: class 0 present only; inter = 2.5, sum probs = 2.5, gt = 5 -> dice = 6 / 8.5
    assert torch.isclose(dice_loss(logits, target), torch.tensor(1 - 6 / 8.5))
    perfect = torch.zeros(1, 2, 2, 3)
    perfect[:, 0] = 50.0
    assert dice_loss(perfect, target) < 1e-6


def test_dice_loss_matches_the_one_hot_formula() -> None:
    """The Dice loss, summed without a one-hot tensor, equals the textbook one-hot formula (value and gradient) on
    random logits with ignored pixels and a class absent from the target."""
    from synthforge.losses import dice_loss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 7, 6, generator=g)
    target = torch.randint(0, 4, (3, 7, 6), generator=g)  # class 4 never present
    target[0, :2] = 255

    def reference(x: torch.Tensor) -> torch.Tensor:
        valid = (target != 255)[:, None].float()
        probs = torch.softmax(x, 1) * valid
        onehot = torch.nn.functional.one_hot(torch.where(target == 255, 0, target), 5).permute(0, 3, 1, 2) * valid
        inter, gt = (probs * onehot).sum((0, 2, 3)), onehot.sum((0, 2, 3))
        dice = (2 * inter + 1) / (probs.sum((0, 2, 3)) + gt + 1)
        return (1 - dice[gt > 0]).mean()

    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours, ref = dice_loss(a, target), reference(b)
    ours.backward()
    ref.backward()
    assert torch.allclose(ours, ref, atol=1e-6) and torch.allclose(a.grad, b.grad, atol=1e-7)


def test_masked_depth_losses_hand_computed() -> None:
    pred = torch.tensor([[[[0.0, 0.1], [0.3, 5.0]]]])
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[[True, True], [True, False]]]])
    assert torch.isclose(losses.masked_l1(pred, target, mask), torch.tensor(0.4 / 3))
    assert torch.isclose(losses.masked_mse(pred, target, mask), torch.tensor(0.1 / 3))
    assert losses.masked_mse(pred, target, torch.zeros_like(mask)) == 0
