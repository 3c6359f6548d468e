"""Everything that talks to Pulsar: the only package that imports pulsar-client."""
