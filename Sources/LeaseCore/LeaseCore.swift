// LeaseCore: see README.md for the layout.
