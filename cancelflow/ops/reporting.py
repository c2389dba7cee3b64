"""`cancelflow report` and `cancelflow asyncapi` (their modules, cancelflow.report and cancelflow.asyncapi,
hold the logic)."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer

from .base import BOOTSTRAP, app, connection, console, run


@app.command()
def report(html: Path = typer.Option(None, "--html", help="Also write a self-contained HTML page with charts."),
           since: float = typer.Option(None, "--since", min=0, help="Only the last DAYS days of records "
                                       "(read from the offset of that time): a year of topics in seconds."),
           as_json: bool = typer.Option(False, "--json", help="The same figures as JSON on stdout, no tables."),
           bootstrap: str = BOOTSTRAP) -> None:
    """Business figures: cancellations by reason per day, save rate, time to first answer, pending; offers taken,
    the lift against the holdout, feedback per reason. Reads the topics a fetch at a time to their current end
    (whole, or from --since days ago)."""
    from datetime import datetime, timedelta, timezone

    from ..report import report_json, stream_figures
    from ..report_page import render_html
    from ..report_text import report_tables

    start = datetime.now(timezone.utc) - timedelta(days=since) if since is not None else None
    figures = run(stream_figures(connection(bootstrap), start))
    if as_json:
        typer.echo(orjson.dumps(report_json(figures), option=orjson.OPT_INDENT_2).decode())
    for table in () if as_json else report_tables(figures):
        console.print(table)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(figures), encoding="utf-8")
        typer.echo(f"written {html}", err=as_json)  # stdout stays JSON only


@app.command("asyncapi")
def asyncapi_cmd(out: Path = typer.Option(None, "--out", help="Where to write the YAML.",
                                          show_default="docs/asyncapi.yaml of the repository"),
                 serve: bool = typer.Option(False, "--serve", help="Serve the document as HTML (Ctrl-C stops)."),
                 host: str = typer.Option("127.0.0.1", "--host"),
                 port: int = typer.Option(8090, "--port")) -> None:
    """Generate the AsyncAPI 3 document of all four services' subscribers and what they publish."""
    from .. import asyncapi

    written = asyncapi.write(out or asyncapi.DEFAULT_OUT)
    console.print(f"written {written}", highlight=False)
    if serve:
        console.print(f"serving http://{host}:{port}/ (raw: /asyncapi.yaml, /asyncapi.json); Ctrl-C stops",
                      highlight=False)
        try:
            asyncapi.serve(host, port)
        except KeyboardInterrupt:
            pass
