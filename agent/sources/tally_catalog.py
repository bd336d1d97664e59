"""What the Tally adapter can read: its collections (with default fields) and reports.

Tally's object types (TDL ``TYPE`` names) and the methods fetched by default, named as
Tally's TDL reference names them. ``discover`` lists these: Tally has no catalogue of
its own to ask, and a collection we do not know is refused rather than passed to TDL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import JobError


@dataclass(frozen=True)
class CollectionSpec:
    name: str  # as jobs name it
    tdl_type: str  # as TDL names it
    fields: tuple[str, ...]


@dataclass(frozen=True)
class ReportSpec:
    name: str  # the TDL report id
    mode: str
    columns: tuple[str, ...]


_SPECS = [
    CollectionSpec("Company", "Company", ("Name", "StartingFrom", "BooksFrom", "GUID")),
    CollectionSpec("Group", "Group", ("Name", "Parent", "IsRevenue", "IsDeemedPositive", "GUID")),
    CollectionSpec(
        "Ledger", "Ledger", ("Name", "Parent", "OpeningBalance", "ClosingBalance", "GUID")
    ),
    CollectionSpec("CostCategory", "Cost Category", ("Name", "GUID")),
    CollectionSpec("CostCentre", "Cost Centre", ("Name", "Parent", "Category", "GUID")),
    CollectionSpec("Currency", "Currency", ("Name", "OriginalName", "DecimalPlaces", "GUID")),
    CollectionSpec("Godown", "Godown", ("Name", "Parent", "GUID")),
    CollectionSpec("StockCategory", "Stock Category", ("Name", "Parent", "GUID")),
    CollectionSpec("StockGroup", "Stock Group", ("Name", "Parent", "GUID")),
    CollectionSpec(
        "StockItem",
        "Stock Item",
        ("Name", "Parent", "BaseUnits", "OpeningBalance", "ClosingBalance", "ClosingValue", "GUID"),
    ),
    CollectionSpec("Unit", "Unit", ("Name", "OriginalName", "IsSimpleUnit", "GUID")),
    CollectionSpec("VoucherType", "Voucher Type", ("Name", "Parent", "NumberingMethod", "GUID")),
    CollectionSpec(
        "Voucher",
        "Voucher",
        (
            "Date",
            "VoucherTypeName",
            "VoucherNumber",
            "PartyLedgerName",
            "Amount",
            "Narration",
            "GUID",
        ),
    ),
]
COLLECTIONS: dict[str, CollectionSpec] = {s.name.lower(): s for s in _SPECS}

REPORTS: dict[str, ReportSpec] = {
    "trialbalance": ReportSpec(
        "Trial Balance", "trial_balance", ("name", "closingDebit", "closingCredit")
    ),
    "daybook": ReportSpec(
        "Day Book",
        "day_book",
        ("guid", "date", "voucherType", "voucherNumber", "partyLedgerName", "narration", "amount"),
    ),
}
_REPORT_TYPES = {
    "closingDebit": "decimal", "closingCredit": "decimal", "amount": "decimal", "date": "date",
}  # fmt: skip


def find_collection(name: Any) -> CollectionSpec:
    key = name.replace(" ", "").lower() if isinstance(name, str) else None
    spec = COLLECTIONS.get(key or "")
    if spec is None:
        known = ", ".join(s.name for s in _SPECS)
        raise JobError(
            "QUERY_FAILED",
            f"'collection' must be one of: {known} (or use 'report')",
            retryable=False,
        )
    return spec


def field_type(name: str) -> str:
    """A column type guessed from a method name, for answers that carry no TYPE attribute."""
    if name in _REPORT_TYPES:
        return _REPORT_TYPES[name]
    low = name.lower()
    if low in ("date", "startingfrom", "booksfrom") or low.endswith("date"):
        return "date"
    if low.endswith(("balance", "amount", "value", "rate")) or low == "decimalplaces":
        return "decimal"
    if low.startswith("is") and len(name) > 2 and name[2].isupper():
        return "boolean"
    return "string"


def catalog() -> list[dict[str, Any]]:
    """The discover rows: one per collection, then one per report."""
    out: list[dict[str, Any]] = []
    for spec in _SPECS:
        out.append(
            {
                "schema": "tally",
                "name": spec.name,
                "kind": "collection",
                "rowEstimate": None,
                "columns": [
                    {"name": f, "type": field_type(f), "nullable": True} for f in spec.fields
                ],
                "primaryKey": ["GUID"] if "GUID" in spec.fields else ["Name"],
                "foreignKeys": [],
            }
        )
    for report in REPORTS.values():
        out.append(
            {
                "schema": "tally",
                "name": report.name,
                "kind": "report",
                "rowEstimate": None,
                "columns": [
                    {"name": c, "type": field_type(c), "nullable": True} for c in report.columns
                ],
                "primaryKey": [],
                "foreignKeys": [],
            }
        )
    return out
