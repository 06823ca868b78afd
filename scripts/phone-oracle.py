#!/usr/bin/env python3
"""The phone-number oracle's corpus: libphonenumber's Python port says what each input means.

Writes, to standard output, one tab-separated row per input:

    form  region  input  expected  type

for every example number phonenumbers knows -- every region and every number type
(`example_number_for_type`), and every type of every non-geographic entity (+800, +808,
+870, ...) -- each written the ways people write numbers:

    national       the national format, read with the number's region as default region
    international  "+49 30 123456", read with no region
    international_in_region  the same, read with the number's region as default region
    e164           "+4930123456", read with no region
    rfc3966        "tel:+49-30-123456", read with no region
    idd00          "00 49 30 123456", read with no region

`expected` is what phonenumbers makes of that input: the E.164 number if it parses it to a
valid number, else `!invalid` (parsed but not valid) or `!error` (not parsed). A `00` form
is parsed by phonenumbers in GB (whose international prefix is 00), since it reads no
international prefix without a region. Only example numbers that phonenumbers itself finds
valid enter the corpus. The output is deterministic: regions, types and forms in a fixed
order, duplicates (the same input and region twice) dropped.

tests/phone_oracle.rs reads it (scripts/phone-oracle.sh runs both).
"""

import sys

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberFormat, PhoneNumberType

TYPES = [
    ("fixed_line", PhoneNumberType.FIXED_LINE),
    ("mobile", PhoneNumberType.MOBILE),
    ("toll_free", PhoneNumberType.TOLL_FREE),
    ("premium_rate", PhoneNumberType.PREMIUM_RATE),
    ("shared_cost", PhoneNumberType.SHARED_COST),
    ("voip", PhoneNumberType.VOIP),
    ("personal_number", PhoneNumberType.PERSONAL_NUMBER),
    ("pager", PhoneNumberType.PAGER),
    ("uan", PhoneNumberType.UAN),
    ("voicemail", PhoneNumberType.VOICEMAIL),
]

# The descriptor of each type in a metadata object, for the non-geographic entities.
DESCRIPTORS = {
    "fixed_line": "fixed_line",
    "mobile": "mobile",
    "toll_free": "toll_free",
    "premium_rate": "premium_rate",
    "shared_cost": "shared_cost",
    "voip": "voip",
    "personal_number": "personal_number",
    "pager": "pager",
    "uan": "uan",
    "voicemail": "voicemail",
}


def oracle(text, region):
    """What phonenumbers makes of `text` read in `region` (None: no default region)."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return "!error"
    if not phonenumbers.is_valid_number(number):
        return "!invalid"
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def forms(number, region):
    """(form, default region for us, text, region phonenumbers reads it in) for one number."""
    international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    out = []
    if region is not None:
        national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        out.append(("national", region, national, region))
    out.append(("international", "", international, None))
    if region is not None:
        # A user whose default region is the number's own: the region must change nothing.
        out.append(("international_in_region", region, international, region))
    out.append(
        ("e164", "", phonenumbers.format_number(number, PhoneNumberFormat.E164), None)
    )
    out.append(
        ("rfc3966", "", phonenumbers.format_number(number, PhoneNumberFormat.RFC3966), None)
    )
    out.append(("idd00", "", "00 " + international[1:], "GB"))
    return out


def examples():
    """(region or None, type name, number) for every valid example number, in a fixed order."""
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for name, kind in TYPES:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None and phonenumbers.is_valid_number(number):
                yield region, name, number
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        meta = PhoneMetadata.metadata_for_nongeo_region(code)
        for name, _ in TYPES:
            desc = getattr(meta, DESCRIPTORS[name], None)
            if desc is None or not desc.example_number:
                continue
            number = phonenumbers.parse("+%d%s" % (code, desc.example_number), None)
            if phonenumbers.is_valid_number(number):
                yield None, name, number


# Inputs reported in issues, read in the region given, besides the example numbers.
EXTRA = [
    # Issue 15: a Gabonese mobile number of the old 8-digit plan, with its leading 0.
    ("06 03 14 39", "GA"),
    ("+241 06 03 14 39", ""),
    ("+241 6 03 14 39", ""),
]


def main():
    out = sys.stdout
    out.write("# phonenumbers %s\n" % phonenumbers.__version__)
    out.write("form\tregion\tinput\texpected\ttype\n")
    seen = set()
    for region, name, number in examples():
        for form, ours, text, theirs in forms(number, region):
            if (text, ours) in seen:
                continue
            seen.add((text, ours))
            out.write("\t".join([form, ours, text, oracle(text, theirs), name]) + "\n")
    for text, region in EXTRA:
        expected = oracle(text, region or None)
        out.write("\t".join(["reported", region, text, expected, "reported"]) + "\n")


if __name__ == "__main__":
    main()
