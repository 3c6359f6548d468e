"""broker-gateway: an HTTP front door for Apache Pulsar."""

__version__ = "0.1.0"
