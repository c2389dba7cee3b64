"""Kafka ACLs over the wire: CreateAcls v3 (KIP-896 left Kafka 4 only the flexible versions, which aiokafka
does not ship), sent with aiokafka's own client and protocol types. One module, so the one request the
library lacks is written in one place."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactString, Int8, Int16, Int32, Schema, TaggedFields


class Resource(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class Pattern(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE = 8
    IDEMPOTENT_WRITE = 12


ALLOW = 3
CLUSTER_NAME = "kafka-cluster"


@dataclass(frozen=True)
class Acl:
    """`principal` may do `operation` on a resource (a name, literal or a prefix); from any host."""

    principal: str  # "User:intake"
    operation: Operation
    resource: Resource
    name: str
    pattern: Pattern = Pattern.LITERAL

    def describe(self) -> str:
        prefix = "prefix " if self.pattern == Pattern.PREFIXED else ""
        return f"{self.principal} {self.operation.name} {self.resource.name} {prefix}{self.name}"


class CreateAclsResponse_v3(Response):
    API_KEY = 30
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", CompactArray(("error_code", Int16), ("error_message", CompactString("utf-8")),
                                 ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


class CreateAclsRequest_v3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 30
    API_VERSION = 3
    RESPONSE_TYPE = CreateAclsResponse_v3
    SCHEMA = Schema(
        ("creations", CompactArray(
            ("resource_type", Int8), ("resource_name", CompactString("utf-8")), ("resource_pattern_type", Int8),
            ("principal", CompactString("utf-8")), ("host", CompactString("utf-8")), ("operation", Int8),
            ("permission_type", Int8), ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


class CreateAcls(Request[CreateAclsRequest_v3]):
    API_KEY = 30

    def __init__(self, acls: list[Acl]) -> None:
        self.acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v3]) -> CreateAclsRequest_v3:
        return request_struct_class([(int(a.resource), a.name, int(a.pattern), a.principal, "*", int(a.operation),
                                      ALLOW, {}) for a in self.acls], {})


async def create_acls(bootstrap: str, acls: list[Acl], **client_options) -> None:
    """Create the ACLs (creating one that exists is a no-op); the first refusal is raised, naming the ACL."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **client_options)
    await client.bootstrap()
    try:
        node = client.get_random_node()
        response = await client.send(node, CreateAcls(acls))
        for acl, (code, message, _) in zip(acls, response.results):
            if code:
                raise for_code(code)(f"{acl.describe()}: {message}")
    finally:
        await client.close()
