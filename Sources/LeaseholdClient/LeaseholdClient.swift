// LeaseholdClient: see README.md for the layout.
