"""Rebuild eval-set.jsonl from BANKING77 and CLINC150, so anyone can audit how it was chosen and labelled.

    python scenarios/router/build_eval_set.py /work/shared/data/prompts > scenarios/router/eval-set.jsonl

The label comes from the query's intent alone (the lists below; the rule is in README.md), never from
reading the text, and each intent contributes the first PER_INTENT queries of its test split in file
order: nothing is hand-picked. `--split train` builds a disjoint set for tuning rules without looking at
the shipped one.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

PER_INTENT = 4

# Something went wrong on this user's account, or they want advice that takes several steps: answering
# needs their records, an investigation or a judgement (disputes, fraud, lost cards, blocks, declines).
HARD = {
    "banking77": [
        "card_payment_not_recognised",
        "cash_withdrawal_not_recognised",
        "direct_debit_payment_not_recognised",
        "transaction_charged_twice",
        "compromised_card",
        "lost_or_stolen_card",
        "wrong_amount_of_cash_received",
        "transfer_not_received_by_recipient",
        "balance_not_updated_after_bank_transfer",
        "extra_charge_on_statement",
        "Refund_not_showing_up",
        "declined_transfer",
    ],
    "clinc150": ["report_fraud", "account_blocked", "card_declined", "improve_credit_score", "rollover_401k"],
}
# One question whose answer is the same for every user (an FAQ), or one value looked up.
EASY = {
    "banking77": [
        "card_delivery_estimate",
        "age_limit",
        "country_support",
        "supported_cards_and_currencies",
        "visa_or_mastercard",
        "top_up_limits",
        "change_pin",
        "apple_pay_or_google_pay",
        "fiat_currency_support",
        "exchange_via_app",
        "getting_spare_card",
        "get_disposable_virtual_card",
    ],
    "clinc150": [
        "weather",
        "time",
        "definition",
        "translate",
        "measurement_conversion",
        "balance",
        "interest_rate",
        "plug_type",
    ],
}


def queries(root: Path, source: str, split: str) -> Iterator[tuple[str, str, str]]:
    """(text, intent, file) in the source file's order."""
    if source == "banking77":
        name = f"banking77/{split}.csv"
        with (root / name).open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                yield row["text"].strip(), row["category"], name
    else:
        name = "clinc150/data_full.json"
        for text, intent in json.loads((root / name).read_text(encoding="utf-8"))[split]:
            yield text.strip(), intent, name


def build(root: Path, split: str) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for label, table in (("hard", HARD), ("easy", EASY)):
        for source, intents in table.items():
            taken = dict.fromkeys(intents, 0)
            for text, intent, name in queries(root, source, split):
                if taken.get(intent, PER_INTENT) < PER_INTENT:
                    taken[intent] += 1
                    rows.append({"text": text, "label": label, "source": name, "intent": intent})
            short = [intent for intent, n in taken.items() if n < PER_INTENT]
            if short:
                raise SystemExit(f"{source} {split}: too few queries for {short}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", type=Path, help="the folder holding banking77/ and clinc150/")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    args = parser.parse_args()
    for row in build(args.prompts, args.split):
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
