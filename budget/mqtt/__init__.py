"""MQTT: margins' topics, broker settings, and the enforcer's own MQTT 5 client."""
