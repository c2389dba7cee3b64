from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, database_url_field


class NotifierSettings(ServiceSettings):
    """notifier: e-mails over SMTP and the reminder schedule. Env prefix NOTIFIER_."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore", populate_by_name=True)

    database_url: str = database_url_field("NOTIFIER")

    http_port: int = Field(8004, description="Port of health and metrics.")
    smtp_host: str = Field("127.0.0.1", description="SMTP relay host.")
    smtp_port: int = Field(10025, description="SMTP relay port.")
    smtp_tls: bool = Field(False, description="Implicit TLS (SMTPS).")
    smtp_starttls: bool = Field(False, description="Upgrade with STARTTLS.")
    smtp_username: str | None = Field(None, description="SMTP login, if the relay wants one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    mail_from: str = Field("support@cancelflow.example", description="Sender address.")
    smtp_connections: int = Field(
        32, ge=1, le=500, description="SMTP connections per dispatch worker (two workers): the mails one "
                                      "transaction sends at once, each DATA held open until the commit.")
    dispatch_interval_s: float = Field(0.5, gt=0, description="How often due notifications are sent.")
    sending_lease_s: float = Field(
        60, gt=0, description="A notification claimed for sending and not confirmed by the server's answer "
                              "within this long (its notifier died) is sent again, with the same Message-ID.")
    test_hold_file: str | None = Field(
        None, description="Tests only: while this file exists, the dispatcher holds every mail before the end of "
                          "its DATA (after the claim's commit) and writes the held Message-IDs to <file>.held.")
