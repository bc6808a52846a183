"""Data: manifests, loading, the embedded phantom data set and DICOM I/O.

Kept import-light on purpose: submodules (``isnet.data.phantom``, ``isnet.data.dicom``) are imported where
they are used, so that ``import isnet.data`` never pulls in pydicom or torch.
"""
