// HTTPCodec: see README.md for the layout.
