"""Stand-in for Slicer's DICOMLib package: the DICOMUtils functions a clinician's path uses."""
