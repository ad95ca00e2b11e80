// Transport: see README.md for the layout.
