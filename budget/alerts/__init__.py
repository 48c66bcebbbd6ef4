"""`margins alerts`: forward the enforcer's alerts from MQTT to a webhook, in order, without duplicates.

content.py (pure) reads an alert and writes what is posted; delivered.py keeps the keys already posted;
webhook.py posts one alert and says whether to retry; forwarder.py runs them against the broker.
"""
