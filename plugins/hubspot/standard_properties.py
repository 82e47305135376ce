"""HubSpot's standard contact property definitions, as GET /crm/v3/properties/contacts returns them."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# The timestamps HubSpot reports for its own (hubspotDefined) properties are fixed and old.
_DEFINED_AT = "2019-08-06T02:41:52.000Z"


def _options(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    """Enumeration options in HubSpot's shape, in display order."""
    return [
        {"label": label, "value": value, "displayOrder": order, "hidden": False}
        for order, (label, value) in enumerate(pairs)
    ]


_BOOL_OPTIONS = _options(("Yes", "true"), ("No", "false"))


def _definition(
    name: str,
    label: str,
    type_: str,
    field_type: str,
    group: str,
    description: str,
    *,
    options: list[dict[str, Any]] | None = None,
    read_only: bool = False,
    calculated: bool = False,
    external_options: bool = False,
    has_unique_value: bool = False,
    number_display_hint: str | None = None,
) -> dict[str, Any]:
    """One property definition with every field HubSpot's v3 properties API returns."""
    definition: dict[str, Any] = {
        "updatedAt": _DEFINED_AT,
        "createdAt": _DEFINED_AT,
        "name": name,
        "label": label,
        "type": type_,
        "fieldType": field_type,
        "description": description,
        "groupName": group,
        "options": options if options is not None else [],
        "displayOrder": -1,
        "calculated": calculated,
        "externalOptions": external_options,
        "hasUniqueValue": has_unique_value,
        "hidden": False,
        "hubspotDefined": True,
        "modificationMetadata": {
            "archivable": False,
            "readOnlyDefinition": True,
            "readOnlyValue": read_only or calculated,
        },
        "formField": not (read_only or calculated),
    }
    if number_display_hint is not None:
        definition["numberDisplayHint"] = number_display_hint
    return definition


_CONTACT = "contactinformation"
_EMAIL = "emailinformation"
_ANALYTICS = "analyticsinformation"
_CONVERSION = "conversioninformation"
_SALES = "sales_properties"
_SOCIAL = "socialmediainformation"

LIFECYCLE_STAGES: tuple[str, ...] = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
)

STANDARD_CONTACT_PROPERTIES: list[dict[str, Any]] = [
    # Identity and contact details.
    _definition("email", "Email", "string", "text", _CONTACT, "A contact's email address"),
    _definition("firstname", "First Name", "string", "text", _CONTACT, "A contact's first name"),
    _definition("lastname", "Last Name", "string", "text", _CONTACT, "A contact's last name"),
    _definition("salutation", "Salutation", "string", "text", _CONTACT, "The title used to address a contact"),
    _definition(
        "phone", "Phone Number", "string", "phonenumber", _CONTACT, "A contact's primary phone number"
    ),
    _definition(
        "mobilephone", "Mobile Phone Number", "string", "phonenumber", _CONTACT, "A contact's mobile phone number"
    ),
    _definition("fax", "Fax Number", "string", "phonenumber", _CONTACT, "A contact's primary fax number"),
    _definition(
        "hs_whatsapp_phone_number",
        "WhatsApp Phone Number",
        "phone_number",
        "phonenumber",
        _CONTACT,
        "The phone number associated with the contact's WhatsApp account",
    ),
    _definition("address", "Street Address", "string", "text", _CONTACT, "A contact's street address"),
    _definition("city", "City", "string", "text", _CONTACT, "A contact's city of residence"),
    _definition("state", "State/Region", "string", "text", _CONTACT, "The contact's state of residence"),
    _definition("zip", "Postal Code", "string", "text", _CONTACT, "A contact's zip code"),
    _definition("country", "Country/Region", "string", "text", _CONTACT, "The contact's country/region"),
    _definition("website", "Website URL", "string", "text", _CONTACT, "The contact's company website"),
    _definition("company", "Company Name", "string", "text", _CONTACT, "Name of the contact's company"),
    _definition("jobtitle", "Job Title", "string", "text", _CONTACT, "A contact's job title"),
    _definition(
        "job_function", "Job function", "string", "text", _CONTACT, "The job function a contact holds"
    ),
    _definition("message", "Message", "string", "textarea", _CONTACT, "A default property for form messages"),
    _definition(
        "date_of_birth", "Date of birth", "date", "date", _CONTACT, "The contact's date of birth"
    ),
    _definition("degree", "Degree", "string", "text", _CONTACT, "The contact's degree"),
    _definition("school", "School", "string", "text", _CONTACT, "The school the contact attended"),
    _definition("field_of_study", "Field of study", "string", "text", _CONTACT, "The contact's field of study"),
    _definition("work_email", "Work email", "string", "text", _CONTACT, "The contact's work email"),
    _definition(
        "num_employees",
        "Number of Employees",
        "number",
        "number",
        _CONTACT,
        "The number of company employees",
    ),
    _definition(
        "annualrevenue",
        "Annual Revenue",
        "number",
        "number",
        _CONTACT,
        "Annual company revenue",
        number_display_hint="currency",
    ),
    _definition(
        "industry",
        "Industry",
        "enumeration",
        "select",
        _CONTACT,
        "The industry a contact is in",
        options=_options(
            ("Accounting", "ACCOUNTING"),
            ("Airlines/Aviation", "AIRLINES_AVIATION"),
            ("Banking", "BANKING"),
            ("Biotechnology", "BIOTECHNOLOGY"),
            ("Computer Software", "COMPUTER_SOFTWARE"),
            ("Construction", "CONSTRUCTION"),
            ("Consumer Goods", "CONSUMER_GOODS"),
            ("E-Learning", "E_LEARNING"),
            ("Education Management", "EDUCATION_MANAGEMENT"),
            ("Financial Services", "FINANCIAL_SERVICES"),
            ("Government Administration", "GOVERNMENT_ADMINISTRATION"),
            ("Hospital & Health Care", "HOSPITAL_HEALTH_CARE"),
            ("Hospitality", "HOSPITALITY"),
            ("Information Technology and Services", "INFORMATION_TECHNOLOGY_AND_SERVICES"),
            ("Insurance", "INSURANCE"),
            ("Internet", "INTERNET"),
            ("Legal Services", "LEGAL_SERVICES"),
            ("Marketing and Advertising", "MARKETING_AND_ADVERTISING"),
            ("Non-Profit Organization Management", "NON_PROFIT_ORGANIZATION_MANAGEMENT"),
            ("Real Estate", "REAL_ESTATE"),
            ("Retail", "RETAIL"),
            ("Telecommunications", "TELECOMMUNICATIONS"),
        ),
    ),
    _definition(
        "hs_language",
        "Preferred language",
        "enumeration",
        "select",
        _CONTACT,
        "Set your contact's preferred language for communications",
        options=_options(
            ("English", "en"),
            ("German", "de"),
            ("French", "fr"),
            ("Spanish", "es"),
            ("Italian", "it"),
            ("Dutch", "nl"),
            ("Portuguese - Brazil", "pt-br"),
            ("Japanese", "ja"),
            ("Chinese - China", "zh-cn"),
        ),
    ),
    _definition("twitterhandle", "Twitter Username", "string", "text", _SOCIAL, "The contact's Twitter handle"),
    _definition(
        "hs_linkedin_url", "LinkedIn URL", "string", "text", _SOCIAL, "The URL of the contact's LinkedIn page"
    ),
    # Sales and lifecycle.
    _definition(
        "lifecyclestage",
        "Lifecycle Stage",
        "enumeration",
        "radio",
        _CONTACT,
        "The qualification of contacts to sales readiness",
        options=_options(
            ("Subscriber", "subscriber"),
            ("Lead", "lead"),
            ("Marketing Qualified Lead", "marketingqualifiedlead"),
            ("Sales Qualified Lead", "salesqualifiedlead"),
            ("Opportunity", "opportunity"),
            ("Customer", "customer"),
            ("Evangelist", "evangelist"),
            ("Other", "other"),
        ),
    ),
    _definition(
        "hs_lead_status",
        "Lead Status",
        "enumeration",
        "radio",
        _SALES,
        "The contact's sales, prospecting or outreach status",
        options=_options(
            ("New", "NEW"),
            ("Open", "OPEN"),
            ("In Progress", "IN_PROGRESS"),
            ("Open Deal", "OPEN_DEAL"),
            ("Unqualified", "UNQUALIFIED"),
            ("Attempted to Contact", "ATTEMPTED_TO_CONTACT"),
            ("Connected", "CONNECTED"),
            ("Bad Timing", "BAD_TIMING"),
        ),
    ),
    _definition(
        "hs_buying_role",
        "Buying Role",
        "enumeration",
        "checkbox",
        _SALES,
        "Role the contact plays during the sales process",
        options=_options(
            ("Blocker", "BLOCKER"),
            ("Budget Holder", "BUDGET_HOLDER"),
            ("Champion", "CHAMPION"),
            ("Decision Maker", "DECISION_MAKER"),
            ("End User", "END_USER"),
            ("Executive Sponsor", "EXECUTIVE_SPONSOR"),
            ("Influencer", "INFLUENCER"),
            ("Legal & Compliance", "LEGAL_AND_COMPLIANCE"),
            ("Other", "OTHER"),
        ),
    ),
    _definition(
        "hubspot_owner_id",
        "Contact owner",
        "enumeration",
        "select",
        _SALES,
        "The owner of a contact",
        external_options=True,
    ),
    _definition(
        "closedate", "Close Date", "datetime", "date", _SALES, "Date the contact became a customer"
    ),
    _definition(
        "associatedcompanyid",
        "Primary Associated Company ID",
        "number",
        "number",
        _CONTACT,
        "HubSpot defined ID of a contact's primary associated company",
    ),
    # Email and consent.
    _definition(
        "hs_email_optout",
        "Unsubscribed from all email",
        "bool",
        "booleancheckbox",
        _EMAIL,
        "Indicates that the current email address has opted out of all email",
        options=_BOOL_OPTIONS,
    ),
    _definition(
        "hs_email_domain",
        "Email Domain",
        "string",
        "text",
        _CONTACT,
        "A contact's email address domain",
        calculated=True,
    ),
    _definition(
        "hs_legal_basis",
        "Legal basis for processing contact's data",
        "enumeration",
        "checkbox",
        _CONTACT,
        "Legal basis for processing contact's data; 'Not applicable' will exempt the contact from GDPR protections",
        options=_options(
            ("Legitimate interest \u2013 prospect/lead", "Legitimate interest \u2013 prospect/lead"),
            ("Legitimate interest - existing customer", "Legitimate interest - existing customer"),
            ("Legitimate interest - other", "Legitimate interest - other"),
            ("Performance of a contract", "Performance of a contract"),
            ("Freely given consent from contact", "Freely given consent from contact"),
            ("Not applicable", "Not applicable"),
        ),
    ),
    # Record metadata (HubSpot sets these; they cannot be written).
    _definition(
        "hs_object_id",
        "Record ID",
        "number",
        "number",
        _CONTACT,
        "The unique ID for this record. This value is set automatically by HubSpot.",
        read_only=True,
    ),
    _definition(
        "createdate",
        "Create Date",
        "datetime",
        "date",
        _CONTACT,
        "The date that a contact entered the system",
        read_only=True,
    ),
    _definition(
        "lastmodifieddate",
        "Last Modified Date",
        "datetime",
        "date",
        _CONTACT,
        "Most recent timestamp of any property update for a contact",
        read_only=True,
    ),
    _definition(
        "notes_last_updated",
        "Last Activity Date",
        "datetime",
        "date",
        _SALES,
        "The last time a note, call, email, meeting, or task was logged for a contact",
        read_only=True,
    ),
    _definition(
        "num_notes",
        "Number of Sales Activities",
        "number",
        "number",
        _SALES,
        "The number of sales activities logged for a contact",
        calculated=True,
    ),
    # Web analytics (calculated by HubSpot from tracking data).
    _definition(
        "hs_analytics_num_visits",
        "Number of Sessions",
        "number",
        "number",
        _ANALYTICS,
        "The number of times a contact has come to your website",
        calculated=True,
    ),
    _definition(
        "hs_analytics_num_page_views",
        "Number of Pageviews",
        "number",
        "number",
        _ANALYTICS,
        "The number of pages a contact has seen on your website",
        calculated=True,
    ),
    _definition(
        "hs_analytics_num_event_completions",
        "Number of event completions",
        "number",
        "number",
        _ANALYTICS,
        "The total number of events the contact has completed",
        calculated=True,
    ),
    _definition(
        "hs_analytics_revenue",
        "Event Revenue",
        "number",
        "number",
        _ANALYTICS,
        "The total revenue associated with the contact's events",
        calculated=True,
        number_display_hint="currency",
    ),
    _definition(
        "hs_analytics_first_timestamp",
        "Time First Seen",
        "datetime",
        "date",
        _ANALYTICS,
        "The first time the contact has been seen",
        calculated=True,
    ),
    _definition(
        "hs_analytics_last_visit_timestamp",
        "Time of Last Session",
        "datetime",
        "date",
        _ANALYTICS,
        "The timestamp of the contact's most recent session",
        calculated=True,
    ),
    _definition(
        "hs_analytics_source",
        "Original Traffic Source",
        "enumeration",
        "select",
        _ANALYTICS,
        "The first known source through which a contact found your website",
        calculated=True,
        options=_options(
            ("Organic Search", "ORGANIC_SEARCH"),
            ("Paid Search", "PAID_SEARCH"),
            ("Email Marketing", "EMAIL_MARKETING"),
            ("Organic Social", "SOCIAL_MEDIA"),
            ("Referrals", "REFERRALS"),
            ("Other Campaigns", "OTHER_CAMPAIGNS"),
            ("Direct Traffic", "DIRECT_TRAFFIC"),
            ("Offline Sources", "OFFLINE"),
            ("Paid Social", "PAID_SOCIAL"),
        ),
    ),
    _definition(
        "first_conversion_date",
        "First Conversion Date",
        "datetime",
        "date",
        _CONVERSION,
        "Date this contact first submitted a form",
        read_only=True,
    ),
    _definition(
        "num_conversion_events",
        "Number of Form Submissions",
        "number",
        "number",
        _CONVERSION,
        "The number of forms this contact has submitted",
        calculated=True,
    ),
]
