"""Checking a SavedModel: conformance to the image API, made by us or by anyone else.

``conformance`` runs the rules, ``unsafe_ops`` refuses graphs with dangerous ops before
loading, and ``fingerprint``, ``files`` and ``checkpoint_index`` read an export's files
without trusting them. The checker shares the contract (``exporter.spec``) with the making
side, but none of its code paths: nothing here imports ``exporter.making``.
"""
