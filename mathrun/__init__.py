"""mathrun: a Twisted server that runs mathematics software for network clients."""

__version__ = "0.1.0"
