"""The customer's cancel page: /cancel/{token} (see routes)."""

from .routes import install_page

__all__ = ["install_page"]
