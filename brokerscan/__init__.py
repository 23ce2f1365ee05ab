"""brokerscan: find and measure the Internet's exposed MQTT and AMQP brokers.

This package holds what every stage shares: the result model, the settings and the CLI."""

__version__ = "0.1.0"
