"""Generated assets of next3d_gen (the built-in head: ``python -m next3d_gen.head_model --write``)."""
