"""The messaging layer: how an event gets from Kafka to a handler and from a handler back to Kafka, with
effect-once semantics. Each module has one job:

- `consumer`: a batch of records in one PostgreSQL transaction (fast path, careful path on a failure),
  the handler's `Context` and the `Subscription` a service declares;
- `deferral`: writes a handler's store queues and sends together, in order;
- `inbox`: event ids already handled (a redelivery is skipped);
- `outbox`: the rows a transaction publishes, and `Emitter`, the one way to emit an event;
- `relay`: publishes committed outbox rows to Kafka;
- `dlq`: a record that can never succeed goes to `<topic>.dlq` with the reason;
- `offsets`: consumed offsets committed after the database commit;
- `lag`: the consumer group's lag as a gauge.

Nothing here knows a service: services give a `Subscription` (topics, handlers, a store) and get a
`Context` (store, clock, emit) per record.
"""
