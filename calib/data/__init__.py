"""Data in and out: structures and readers, shipped datasets, reference labellers, netCDF helpers."""
