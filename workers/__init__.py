"""Protocol workers: the probe engine, its transport, and the MQTT/AMQP/TLS probes."""
