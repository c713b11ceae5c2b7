"""Writing the results: the deployable bundle folder and the report."""
