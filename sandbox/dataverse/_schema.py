"""The tables the simulator holds, as column definitions: ``lead`` and ``contact`` (synced),
``account`` (a contact's ``parentcustomerid``), ``systemuser`` and ``team`` (the owners a
record's ``ownerid`` points at).

Columns, types, lengths, required levels and option sets follow reference B2. Both the data
API (validation, JSON rendering, query typing) and the metadata API (``EntityDefinitions``)
read these definitions, so the two can never disagree. No state lives here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

# Fixed ids so a restart keeps the same metadata and users (clients cache both).
ORGANIZATION_ID = "8d9f5c1e-1b71-4b7a-9f0e-5a5e2f1c0001"
BUSINESS_UNIT_ID = "8d9f5c1e-1b71-4b7a-9f0e-5a5e2f1c0002"
INTEGRATION_USER_ID = "8d9f5c1e-1b71-4b7a-9f0e-5a5e2f1c0003"  # the application user behind API tokens
UI_USER_ID = "8d9f5c1e-1b71-4b7a-9f0e-5a5e2f1c0004"  # "a person in Dynamics": admin API and Python API
# The users every org has from the start (systemuser rows, re-created by a reset).
SEEDED_USERS = (
    (INTEGRATION_USER_ID, "#", "Sandbox Integration", "sandbox-integration@sandbox.example"),
    (UI_USER_ID, "Sandbox", "User", "sandbox.user@sandbox.example"),
)

# Column kinds, with the Edm type a $filter literal must match and the metadata AttributeType.
EDM_TYPES = {
    "guid": "Edm.Guid",
    "lookup": "Edm.Guid",
    "string": "Edm.String",
    "picklist": "Edm.Int32",
    "state": "Edm.Int32",
    "status": "Edm.Int32",
    "datetime": "Edm.DateTimeOffset",
    "bigint": "Edm.Int64",
    "boolean": "Edm.Boolean",
    "integer": "Edm.Int32",
    "money": "Edm.Decimal",
}
ATTRIBUTE_TYPES = {
    "guid": "Uniqueidentifier",
    "lookup": "Lookup",
    "string": "String",
    "picklist": "Picklist",
    "state": "State",
    "status": "Status",
    "datetime": "DateTime",
    "bigint": "BigInt",
    "boolean": "Boolean",
    "integer": "Integer",
    "money": "Money",
}


@dataclass(frozen=True)
class Option:
    value: int
    label: str
    state: int | None = None  # status options: the state they belong to
    default_status: int | None = None  # state options: the status a state change picks


@dataclass(frozen=True)
class Column:
    name: str  # logical name; lookups are read as _<name>_value
    kind: str
    display: str
    max_length: int | None = None
    required: str = "None"
    fmt: str | None = None  # StringAttributeMetadata.Format
    options: tuple[Option, ...] = ()
    create: bool = True  # IsValidForCreate
    update: bool = True  # IsValidForUpdate
    targets: tuple[str, ...] = ()  # lookup targets (logical names)
    default: Any = None  # the value a create without the column gets (Two Options: DefaultValue)
    bounds: tuple[float, float] | None = None  # integer/money: MinValue, MaxValue
    # A customer lookup (parentcustomerid) has one navigation property per target
    # (parentcustomerid_account, parentcustomerid_contact); an owner lookup has one (ownerid).
    nav_per_target: bool = False
    nav_suffix: str = ""  # after the target in a per-target navigation: regardingobjectid_lead_task

    @property
    def navigations(self) -> dict[str, tuple[str, ...]]:
        """Navigation property (the name before ``@odata.bind``) -> the targets it can bind to."""
        if self.nav_per_target:
            return {f"{self.name}_{t}{self.nav_suffix}": (t,) for t in self.targets}
        return {self.name: self.targets}

    @property
    def type_key(self) -> str:
        """Where a row keeps the logical name of the record a lookup points at (like ``owneridtype``)."""
        return f"{self.name}type"

    @property
    def prop(self) -> str:
        """The property name in JSON and in query options."""
        return f"_{self.name}_value" if self.kind == "lookup" else self.name

    @property
    def writable(self) -> bool:
        return self.create or self.update

    @property
    def edm(self) -> str:
        return EDM_TYPES[self.kind]

    def option_values(self, state: int | None = None) -> list[int]:
        return [o.value for o in self.options if state is None or o.state is None or o.state == state]

    def label_of(self, value: object) -> str | None:
        return next((o.label for o in self.options if o.value == value), None)

    @property
    def metadata_id(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-dataverse/attribute/{self.name}"))


@dataclass(frozen=True)
class Table:
    logical: str
    entity_set: str
    schema_name: str
    display: str
    object_type_code: int
    primary_name: str
    columns: tuple[Column, ...]
    alternate_keys: tuple[tuple[str, tuple[str, ...]], ...]  # (key schema name, column names)
    primary_key: str | None = None  # the primary id column when it is not ``<logical>id`` (activities: activityid)
    read_only: bool = False  # written only through actions (listmember: AddMemberList/RemoveMemberList)
    privilege: str = ""  # the privilege names' suffix (prvReadUser), when it is not the schema name
    ownership: str = "UserOwned"  # EntityMetadata.OwnershipType
    # Written over the Web API by the integration user's role (users and teams are read-only to it:
    # a write is refused 403 PrivilegeDenied) and offered the bulk messages.
    api_writes: bool = True
    by_prop: dict[str, Column] = field(init=False, compare=False)
    by_name: dict[str, Column] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_prop", {c.prop: c for c in self.columns})
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})

    @property
    def primary_id(self) -> str:
        return self.primary_key or f"{self.logical}id"

    @property
    def odata_type(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.logical}"

    @property
    def metadata_id(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-dataverse/entity/{self.logical}"))

    @property
    def privilege_name(self) -> str:
        return self.privilege or self.schema_name

    @property
    def navigations(self) -> dict[str, Column]:
        """Every lookup's navigation properties -> the lookup column."""
        return {nav: c for c in self.columns if c.kind == "lookup" for nav in c.navigations}

    @property
    def key_columns(self) -> list[str]:
        return [c for _, cols in self.alternate_keys for c in cols]


# The native Marketo sync's filter column (a Two Options custom column an admin adds to lead and
# contact): only No keeps a record out. New records get its default, Yes.
SYNC_TO_MARKETO = Column(
    "new_synctomkto", "boolean", "Sync to Marketo", options=(Option(0, "No"), Option(1, "Yes")), default=True
)


def _system_columns(state: Column, status: Column, *, fullname: bool = True) -> tuple[Column, ...]:
    name = (Column("fullname", "string", "Full Name", max_length=160, create=False, update=False),)
    return (
        *(name if fullname else ()),
        state,
        status,
        Column("ownerid", "lookup", "Owner", required="SystemRequired", targets=("systemuser", "team")),
        Column("createdby", "lookup", "Created By", create=False, update=False, targets=("systemuser",)),
        Column("modifiedby", "lookup", "Modified By", create=False, update=False, targets=("systemuser",)),
        Column("createdon", "datetime", "Created On", create=False, update=False),
        Column("modifiedon", "datetime", "Modified On", create=False, update=False),
        Column("versionnumber", "bigint", "Version Number", create=False, update=False),
    )


_LEAD_SOURCES = (
    "Advertisement",
    "Employee Referral",
    "External Referral",
    "Partner",
    "Public Relations",
    "Seminar",
    "Trade Show",
    "Web",
    "Word of Mouth",
    "Other",
)

LEAD = Table(
    logical="lead",
    entity_set="leads",
    schema_name="Lead",
    display="Lead",
    object_type_code=4,
    primary_name="fullname",
    columns=(
        Column("leadid", "guid", "Lead", required="SystemRequired", update=False),
        Column("firstname", "string", "First Name", max_length=50, required="Recommended", fmt="Text"),
        Column("lastname", "string", "Last Name", max_length=50, required="ApplicationRequired", fmt="Text"),
        Column("emailaddress1", "string", "Email", max_length=100, fmt="Email"),
        Column("companyname", "string", "Company Name", max_length=100, required="Recommended", fmt="Text"),
        Column("subject", "string", "Topic", max_length=300, required="ApplicationRequired", fmt="Text"),
        Column("telephone1", "string", "Business Phone", max_length=50, fmt="Phone"),
        Column("jobtitle", "string", "Job Title", max_length=100, fmt="Text"),
        Column(
            "leadsourcecode",
            "picklist",
            "Lead Source",
            options=tuple(Option(i + 1, label) for i, label in enumerate(_LEAD_SOURCES)),
        ),
        SYNC_TO_MARKETO,
        *_system_columns(
            Column(
                "statecode",
                "state",
                "Status",
                required="SystemRequired",
                options=(
                    Option(0, "Open", default_status=1),
                    Option(1, "Qualified", default_status=3),
                    Option(2, "Disqualified", default_status=4),
                ),
            ),
            Column(
                "statuscode",
                "status",
                "Status Reason",
                options=(
                    Option(1, "New", state=0),
                    Option(2, "Contacted", state=0),
                    Option(3, "Qualified", state=1),
                    Option(4, "Lost", state=2),
                    Option(5, "Cannot Contact", state=2),
                    Option(6, "No Longer Interested", state=2),
                    Option(7, "Canceled", state=2),
                ),
            ),
        ),
    ),
    alternate_keys=(("lead_emailaddress1_key", ("emailaddress1",)),),
)

CONTACT = Table(
    logical="contact",
    entity_set="contacts",
    schema_name="Contact",
    display="Contact",
    object_type_code=2,
    primary_name="fullname",
    columns=(
        Column("contactid", "guid", "Contact", required="SystemRequired", update=False),
        Column("firstname", "string", "First Name", max_length=50, required="Recommended", fmt="Text"),
        Column("lastname", "string", "Last Name", max_length=50, required="ApplicationRequired", fmt="Text"),
        Column("emailaddress1", "string", "Email", max_length=100, fmt="Email"),
        Column("telephone1", "string", "Business Phone", max_length=50, fmt="Phone"),
        Column("jobtitle", "string", "Job Title", max_length=100, fmt="Text"),
        Column("originatingleadid", "lookup", "Originating Lead", targets=("lead",)),
        SYNC_TO_MARKETO,
        Column("parentcustomerid", "lookup", "Company Name", targets=("account", "contact"), nav_per_target=True),
        *_system_columns(
            Column(
                "statecode",
                "state",
                "Status",
                required="SystemRequired",
                options=(Option(0, "Active", default_status=1), Option(1, "Inactive", default_status=2)),
            ),
            Column("statuscode", "status", "Status Reason", options=(Option(1, "Active", 0), Option(2, "Inactive", 1))),
        ),
    ),
    alternate_keys=(("contact_emailaddress1_key", ("emailaddress1",)),),
)

# Industry (account.industrycode): the options a new org has.
_INDUSTRIES = (
    "Accounting",
    "Agriculture and Non-petrol Natural Resource Extraction",
    "Broadcasting Printing and Publishing",
    "Brokers",
    "Building Supply Retail",
    "Business Services",
    "Consulting",
    "Consumer Services",
    "Design, Direction and Creative Management",
    "Distributors, Dispatchers and Processors",
    "Doctor's Offices and Clinics",
    "Durable Manufacturing",
    "Eating and Drinking Places",
    "Entertainment Retail",
    "Equipment Rental and Leasing",
    "Financial",
    "Food and Tobacco Processing",
    "Inbound Capital Intensive Processing",
    "Inbound Repair and Services",
    "Insurance",
    "Legal Services",
    "Non-Durable Merchandise Retail",
    "Outbound Consumer Service",
    "Petrochemical Extraction and Distribution",
    "Service Retail",
    "SIG Affiliations",
    "Social Services",
    "Special Outbound Trade Contractors",
    "Specialty Realty",
    "Transportation",
    "Utility Creation and Distribution",
    "Vehicle Retail",
    "Wholesale",
)

ACCOUNT = Table(
    logical="account",
    entity_set="accounts",
    schema_name="Account",
    display="Account",
    object_type_code=1,
    primary_name="name",
    columns=(
        Column("accountid", "guid", "Account", required="SystemRequired", update=False),
        Column("name", "string", "Account Name", max_length=160, required="ApplicationRequired", fmt="Text"),
        Column("accountnumber", "string", "Account Number", max_length=20, fmt="Text"),
        Column("websiteurl", "string", "Website", max_length=200, fmt="Url"),
        Column("telephone1", "string", "Main Phone", max_length=50, fmt="Phone"),
        Column(
            "industrycode",
            "picklist",
            "Industry",
            options=tuple(Option(i + 1, label) for i, label in enumerate(_INDUSTRIES)),
        ),
        Column("numberofemployees", "integer", "Number of Employees", bounds=(0, 1_000_000_000)),
        Column("revenue", "money", "Annual Revenue", bounds=(0, 100_000_000_000_000)),
        Column("address1_city", "string", "Address 1: City", max_length=80, fmt="Text"),
        Column("address1_country", "string", "Address 1: Country/Region", max_length=80, fmt="Text"),
        *_system_columns(
            Column(
                "statecode",
                "state",
                "Status",
                required="SystemRequired",
                options=(Option(0, "Active", default_status=1), Option(1, "Inactive", default_status=2)),
            ),
            Column("statuscode", "status", "Status Reason", options=(Option(1, "Active", 0), Option(2, "Inactive", 1))),
            fullname=False,
        ),
    ),
    alternate_keys=(),
)

SYSTEMUSER = Table(
    logical="systemuser",
    entity_set="systemusers",
    schema_name="SystemUser",
    display="User",
    object_type_code=8,
    primary_name="fullname",
    columns=(
        Column("systemuserid", "guid", "User", required="SystemRequired", update=False),
        Column("firstname", "string", "First Name", max_length=64, required="Recommended", fmt="Text"),
        Column("lastname", "string", "Last Name", max_length=64, required="ApplicationRequired", fmt="Text"),
        Column("fullname", "string", "Full Name", max_length=200, create=False, update=False),
        Column("internalemailaddress", "string", "Primary Email", max_length=100, fmt="Email"),
        Column("domainname", "string", "User Name", max_length=1024, required="SystemRequired", fmt="Text"),
        Column("title", "string", "Title", max_length=128, fmt="Text"),
        Column("createdon", "datetime", "Created On", create=False, update=False),
        Column("modifiedon", "datetime", "Modified On", create=False, update=False),
        Column("versionnumber", "bigint", "Version Number", create=False, update=False),
    ),
    alternate_keys=(),
    privilege="User",
    ownership="BusinessOwned",
    api_writes=False,
)

TEAM = Table(
    logical="team",
    entity_set="teams",
    schema_name="Team",
    display="Team",
    object_type_code=9,
    primary_name="name",
    columns=(
        Column("teamid", "guid", "Team", required="SystemRequired", update=False),
        Column("name", "string", "Team Name", max_length=160, required="SystemRequired", fmt="Text"),
        Column(
            "teamtype",
            "picklist",
            "Team Type",
            required="SystemRequired",
            options=(
                Option(0, "Owner"),
                Option(1, "Access"),
                Option(2, "Microsoft Entra ID Security Group"),
                Option(3, "Microsoft Entra ID Office Group"),
            ),
        ),
        Column("emailaddress", "string", "Email", max_length=100, fmt="Email"),
        Column("createdon", "datetime", "Created On", create=False, update=False),
        Column("modifiedon", "datetime", "Modified On", create=False, update=False),
        Column("versionnumber", "bigint", "Version Number", create=False, update=False),
    ),
    alternate_keys=(),
    ownership="BusinessOwned",
    api_writes=False,
)


# -- marketing: what the flow-step webhooks write (tasks, campaigns, marketing lists) ---------------
# Columns and option sets as a default org has them (Dataverse table reference: task, campaign,
# list, listmember). Lists are static only here (no dynamic-list queries).


TASK = Table(
    logical="task",
    entity_set="tasks",
    schema_name="Task",
    display="Task",
    object_type_code=4212,
    primary_name="subject",
    primary_key="activityid",
    privilege="Activity",  # activities share one set: prvCreateActivity, prvAppendActivity, ...
    columns=(
        Column("activityid", "guid", "Activity", required="SystemRequired", update=False),
        Column("subject", "string", "Subject", max_length=200, required="ApplicationRequired", fmt="Text"),
        Column("description", "string", "Description", max_length=2000, fmt="TextArea"),
        Column("scheduledend", "datetime", "Due Date"),
        Column(
            "regardingobjectid",
            "lookup",
            "Regarding",
            targets=("lead", "contact", "account"),
            nav_per_target=True,
            nav_suffix="_task",
        ),
        *_system_columns(
            Column(
                "statecode",
                "state",
                "Activity Status",
                required="SystemRequired",
                options=(
                    Option(0, "Open", default_status=2),
                    Option(1, "Completed", default_status=5),
                    Option(2, "Canceled", default_status=6),
                ),
            ),
            Column(
                "statuscode",
                "status",
                "Status Reason",
                options=(
                    Option(2, "Not Started", state=0),
                    Option(3, "In Progress", state=0),
                    Option(4, "Waiting on someone else", state=0),
                    Option(7, "Deferred", state=0),
                    Option(5, "Completed", state=1),
                    Option(6, "Canceled", state=2),
                ),
            ),
            fullname=False,
        ),
    ),
    alternate_keys=(),
)

CAMPAIGN = Table(
    logical="campaign",
    entity_set="campaigns",
    schema_name="Campaign",
    display="Campaign",
    object_type_code=4400,
    primary_name="name",
    columns=(
        Column("campaignid", "guid", "Campaign", required="SystemRequired", update=False),
        Column("name", "string", "Name", max_length=128, required="ApplicationRequired", fmt="Text"),
        *_system_columns(
            Column(
                "statecode",
                "state",
                "Status",
                required="SystemRequired",
                options=(Option(0, "Active", default_status=0), Option(1, "Inactive", default_status=6)),
            ),
            Column(
                "statuscode",
                "status",
                "Status Reason",
                options=(
                    Option(0, "Proposed", state=0),
                    Option(1, "Ready To Launch", state=0),
                    Option(2, "Launched", state=0),
                    Option(3, "Completed", state=0),
                    Option(4, "Canceled", state=0),
                    Option(5, "Suspended", state=0),
                    Option(6, "Inactive", state=1),
                ),
            ),
            fullname=False,
        ),
    ),
    alternate_keys=(),
)

MARKETING_LIST = Table(
    logical="list",
    entity_set="lists",
    schema_name="List",
    display="Marketing List",
    object_type_code=4300,
    primary_name="listname",
    columns=(
        Column("listid", "guid", "List", required="SystemRequired", update=False),
        Column("listname", "string", "Name", max_length=128, required="ApplicationRequired", fmt="Text"),
        Column(
            "createdfromcode",
            "picklist",
            "Targeted At",
            required="ApplicationRequired",
            options=(Option(1, "Account"), Option(2, "Contact"), Option(4, "Lead")),
            update=False,
        ),
        Column("description", "string", "Description", max_length=2000, fmt="TextArea"),
        *_system_columns(
            Column(
                "statecode",
                "state",
                "Status",
                required="SystemRequired",
                options=(Option(0, "Active", default_status=0), Option(1, "Inactive", default_status=1)),
            ),
            Column("statuscode", "status", "Status Reason", options=(Option(0, "Active", 0), Option(1, "Inactive", 1))),
            fullname=False,
        ),
    ),
    alternate_keys=(),
)

LIST_MEMBER = Table(
    logical="listmember",
    entity_set="listmembers",
    schema_name="ListMember",
    display="Marketing List Member",
    object_type_code=4301,
    primary_name="listmemberid",
    columns=(
        Column("listmemberid", "guid", "List Member", required="SystemRequired", create=False, update=False),
        Column("listid", "lookup", "List", required="SystemRequired", targets=("list",), update=False),
        Column("entityid", "lookup", "Member", required="SystemRequired", targets=("lead", "contact"), update=False),
        Column("entitytype", "string", "Member Type", max_length=64, create=False, update=False),
        Column("createdon", "datetime", "Created On", create=False, update=False),
        Column("versionnumber", "bigint", "Version Number", create=False, update=False),
    ),
    alternate_keys=(),
    read_only=True,
)

MARKETING_TABLES: tuple[Table, ...] = (TASK, CAMPAIGN, MARKETING_LIST, LIST_MEMBER)
# The lists' member types (``createdfromcode``) by the member's table.
LIST_MEMBER_TYPES = {"account": 1, "contact": 2, "lead": 4}

TABLES: tuple[Table, ...] = (LEAD, CONTACT, ACCOUNT, SYSTEMUSER, TEAM, *MARKETING_TABLES)
BY_SET = {t.entity_set: t for t in TABLES}
BY_LOGICAL = {t.logical: t for t in TABLES}


def table_named(name: str) -> Table | None:
    """A table by entity set (``leads``) or logical name (``lead``), case-insensitively."""
    key = name.lower()
    return BY_SET.get(key) or BY_LOGICAL.get(key)
