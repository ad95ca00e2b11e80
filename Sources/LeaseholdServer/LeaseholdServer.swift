// LeaseholdServer: see README.md for the layout.
