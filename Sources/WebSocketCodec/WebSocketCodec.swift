// WebSocketCodec: see README.md for the layout.
