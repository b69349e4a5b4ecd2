"""The package version, read by setup.cfg without importing TensorFlow."""

VERSION = "0.1.0"
