from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, database_url_field


class IntakeSettings(ServiceSettings):
    """intake: the HTTP API and the `cancellation.submissions` consumer. Env prefix INTAKE_."""

    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore", populate_by_name=True)

    database_url: str = database_url_field("INTAKE")
    http_port: int = Field(8001, description="Port of the HTTP API, health and metrics.")
    # No default: an intake started without keys must not accept a key someone read in a README.
    api_keys: SecretStr = Field(description="Required. Accepted X-API-Key values, comma separated (several for "
                                            "rotation). `cancelflow up` generates one per stack.")
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 secret of signed upstream calls (`X-Signature: t=...,v1=...`); "
                          "`cancelflow up` generates one per stack.")
    signature_tolerance_s: int = Field(
        300, ge=1, le=86_400, description="A signed call whose `t` is further than this from now is refused; a "
                                          "signature is remembered this long, so a replay within it is refused.")
    public_url: str = Field("http://127.0.0.1:8001", description="Base URL used in `status_url`.")
    status_collect_ms: int = Field(
        100, ge=0, le=5000, description="The status view's events (decisions, settlements, notifications) are "
                                        "collected this long into one transaction; the status lags by as much.")

    link_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 secret of the customers' signed cancel links (/cancel/{token}); "
                          "unset: no links are issued and every link shows the error page.")
    link_ttl_days: int = Field(7, ge=1, le=90, description="How long a signed cancel link is valid by default.")
    offer_policy_json: str | None = Field(
        None, validation_alias=AliasChoices("ELIGIBILITY_OFFER_POLICY_JSON"),
        description="The quote's offers: the same setting as eligibility's (ELIGIBILITY_OFFER_POLICY_JSON), "
                    "read by both so a quote shows the offers the decision carries.")
    offer_holdout_percent: int = Field(
        0, ge=0, le=50, validation_alias=AliasChoices("ELIGIBILITY_OFFER_HOLDOUT_PERCENT"),
        description="The quote's holdout: the same setting as eligibility's (ELIGIBILITY_OFFER_HOLDOUT_PERCENT), "
                    "read by both so a contract in the holdout group is quoted no offers, as it gets none.")

    @field_validator("api_keys")
    @classmethod
    def _some_key(cls, value: SecretStr) -> SecretStr:
        if not [k for k in value.get_secret_value().split(",") if k.strip()]:
            raise ValueError("no key in it (comma separated X-API-Key values)")
        return value

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]
