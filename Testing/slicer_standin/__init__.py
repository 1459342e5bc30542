"""A stand-in for the part of 3D Slicer the LesionFactorizer module touches (see README.md)."""
