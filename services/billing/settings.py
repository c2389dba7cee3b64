from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, database_url_field


class BillingSettings(ServiceSettings):
    """billing: payment ledger and final settlements. Env prefix BILLING_."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore", populate_by_name=True)

    database_url: str = database_url_field("BILLING")

    http_port: int = Field(8003, description="Port of health and metrics.")
