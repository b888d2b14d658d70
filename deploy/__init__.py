"""Local infrastructure: the Kafka broker and PostgreSQL server the services run on."""
