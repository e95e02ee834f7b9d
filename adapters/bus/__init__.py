"""The bus: NATS JetStream as the event log between the HTTP fronts and the engine workers (SPEC §9).

`stream` holds the stream's layout (partitions, subjects, consumers), the wire format and the asyncio
loop the NATS client runs on; `leases` holds who owns which partition, in PostgreSQL, with the fencing
check every commit of a worker makes.
"""
