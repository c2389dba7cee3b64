from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, database_url_field


class EligibilitySettings(ServiceSettings):
    """eligibility: contract projection, decisions, withdrawals, completion. Env prefix ELIGIBILITY_."""

    model_config = SettingsConfigDict(env_prefix="ELIGIBILITY_", extra="ignore", populate_by_name=True)

    database_url: str = database_url_field("ELIGIBILITY")

    http_port: int = Field(8002, description="Port of health and metrics.")
    offer_policy_json: str | None = Field(
        None, description='Retention offers by reason as JSON, e.g. {"TOO_DIFFICULT": ["guided_training"]}; '
                          "unset means the SPEC's default table.")
    offer_holdout_percent: int = Field(
        0, ge=0, le=50, description="Share (%) of accepted cancellations, chosen deterministically from the contract "
                                    "id, that carry no offers (`holdout: true`): the baseline the offers' lift is "
                                    "measured against.")
    completion_interval_s: float = Field(1.0, gt=0, description="How often due cancellations are completed.")
