"""Geometry: poses, projection, crops, PnP. Imports nothing else of cooppose but errors."""
