"""Usage reports for research groups and finance, as CSV files.

`python -m gateway_core.reports --help` lists the commands.
"""

from gateway_core.reports.chargeback import (
    ChargebackFile,
    chargeback_file_name,
    month_bounds,
    previous_month,
    write_chargeback,
)
from gateway_core.reports.research import (
    COLUMNS,
    PRICE_SOURCE,
    TOTAL_LABEL,
    ProjectInfo,
    ReportRow,
    ReportScope,
    ReportTotals,
    export_report_file,
    find_scope,
    report_header,
    report_rows,
    report_summary,
    scope_for_team,
    write_report_csv,
)

__all__ = [
    "COLUMNS",
    "PRICE_SOURCE",
    "TOTAL_LABEL",
    "ChargebackFile",
    "ProjectInfo",
    "ReportRow",
    "ReportScope",
    "ReportTotals",
    "chargeback_file_name",
    "export_report_file",
    "find_scope",
    "month_bounds",
    "previous_month",
    "report_header",
    "report_rows",
    "report_summary",
    "scope_for_team",
    "write_chargeback",
    "write_report_csv",
]
