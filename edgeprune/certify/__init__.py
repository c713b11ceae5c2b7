"""Certification of the shipped file on the held-out certify split: fixed-sequence testing along the frontier and
the pre-flight arithmetic of what a certify split of a given size can certify (``sequence``). Pure statistics: no
torch, no onnxruntime. See docs/certification.md."""
