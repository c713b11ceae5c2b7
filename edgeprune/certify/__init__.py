"""Certification: the statistics, running a file on the certify split, and the policy deciding which plans are tested in which order."""
