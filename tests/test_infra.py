"""Contract tests of the Azure deployment (`azure.yaml`, `infra/`, `host.json`).

No Bicep compiler can be installed here (reference/tooling.md §3), so these tests stand in for
it: tree-sitter-bicep for syntax, pycep-parser for structure (modules and their parameters and
outputs resolve, the Flex Consumption app and its resources, identity-based storage, role ids,
no secret in plain text, alert rules that read the telemetry the app exports), and the app
settings the Bicep sets against the ones `sync_core/settings.py` reads, both ways. checkov is not
run from here: it pins an older pycep-parser and has its own venv (`make infra-check`, part of
`make test`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import tree_sitter_bicep
from croniter import croniter
from pycep import BicepParser
from pydantic import SecretStr
from tree_sitter import Language, Node, Parser

from sync_core.settings import (
    DEFAULT_CYCLE_BUDGET,
    DEFAULT_SCHEDULE,
    ENV_NAMES,
    DynamicsDeletePolicy,
    MarketoDeletePolicy,
    Settings,
)

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
API = INFRA / "app" / "api.bicep"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# --- the settings lists the comparison needs, each entry with its reason ----------------------

# Read by sync_core but deliberately not set in Azure.
NOT_SET_IN_AZURE = {
    # sandbox only: a fixed bearer token for the local Dataverse simulator
    "DATAVERSE_STATIC_TOKEN",
    # the connection-string alternative to SYNC_TABLES_ENDPOINT; it needs an account key, and
    # shared-key access is off: in Azure the app reaches its tables with the managed identity
    "SYNC_TABLES_CONNECTION",
    # the same for the job queue: in Azure the app reaches it through SYNC_QUEUE_ENDPOINT
    "SYNC_QUEUE_CONNECTION",
}

# Read by sync_core as a connection string only (Azurite locally). In Azure the Functions host
# reads the identity-based form `AzureWebJobsStorage__*` instead, which counts as covering it;
# the app's own tables then come from SYNC_TABLES_ENDPOINT.
COVERED_BY_IDENTITY_FORM = {"AzureWebJobsStorage": "AzureWebJobsStorage__"}

# Set by the Bicep for the platform, not read by sync_core itself.
PLATFORM_SETTINGS = {
    # the Functions host's storage (deployment package, locks, timer status, queue triggers),
    # identity-based: credential type, which identity, and the service endpoints
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    # telemetry to Application Insights, with Entra authentication (local auth is off); the host
    # reads both, sync_core the connection string too (TelemetrySettings, checked below)
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    # read by azure-identity's DefaultAzureCredential (not by sync_core): picks the
    # user-assigned identity for the tables and, without a client secret, for Dataverse
    "AZURE_CLIENT_ID",
}

# Settings Flex Consumption rejects or moved into functionAppConfig (tooling.md §4.3).
NOT_ON_FLEX = [
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
]

# Built-in role ids (the same in every tenant) and the resource each is scoped to.
ROLES = [
    ("storageBlobDataOwner", "b7e6dc6d-f1e8-4753-8033-0f276bb0955b", "Microsoft.Storage/storageAccounts"),
    ("storageTableDataContributor", "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3", "Microsoft.Storage/storageAccounts"),
    ("storageQueueDataContributor", "974c5e8b-45b9-4653-ba55-5f855dd0fb88", "Microsoft.Storage/storageAccounts"),
    ("keyVaultSecretsUser", "4633458b-17de-408a-b874-0445c86b69e6", "Microsoft.KeyVault/vaults"),
    ("monitoringMetricsPublisher", "3913510d-42f4-4e42-8a64-420c390055eb", "Microsoft.Insights/components"),
]

KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=\$\{\w+\}\)$")

# Values for the settings whose Bicep value is not a parameter default (required parameters,
# Key Vault references, resource endpoints): what a real deployment would resolve them to.
EXAMPLE_VALUES = {
    "MARKETO_BASE_URL": "https://123-ABC-456.mktorest.com",
    "MARKETO_CLIENT_ID": "marketo-client-id",
    "MARKETO_CLIENT_SECRET": "resolved-from-key-vault",
    "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
    "DATAVERSE_TENANT_ID": "00000000-0000-0000-0000-000000000001",
    "DATAVERSE_CLIENT_SECRET": "resolved-from-key-vault",
    "WEBHOOK_SHARED_SECRET": "resolved-from-key-vault",
    "SYNC_TABLES_ENDPOINT": "https://stexample.table.core.windows.net/",
    "SYNC_QUEUE_ENDPOINT": "https://stexample.queue.core.windows.net/",
}


# --- parsing helpers ---------------------------------------------------------------------------


@functools.cache
def _bicep(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = BicepParser().parse(file_path=path)
    return doc


def _body(entry: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, unwrapping `= if (cond) {...}`."""
    config: dict[str, Any] = entry["config"]
    return config["config"] if "condition" in config else config


def _resources(path: Path, type_: str) -> dict[str, dict[str, Any]]:
    """Declared (not `existing`) resources of one type in a file, by symbol."""
    return {
        symbol: _body(entry)
        for symbol, entry in _bicep(path).get("resources", {}).items()
        if entry["type"] == type_ and not entry["existing"]
    }


def _one_resource(type_: str) -> tuple[Path, dict[str, Any]]:
    found = [(path, body) for path in BICEP_FILES for body in _resources(path, type_).values()]
    assert len(found) == 1, f"expected one {type_}, found {len(found)}"
    return found[0]


def _dotted(node: Any) -> str | None:
    """`a.b.c` for a property-access chain (pycep nests them), else None."""
    if isinstance(node, str):
        return node
    operator = node.get("operator") if isinstance(node, dict) else None  # an alert rule's "operator" is text
    if isinstance(operator, dict) and operator.get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        left, right = _dotted(operands["operand_1"]), _dotted(operands["operand_2"])
        return f"{left}.{right}" if left and right else None
    return None


def _references(doc: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every identifier-like reference in a document outside its parameter declarations:
    property chains, plain identifiers and the expressions inside `${...}` interpolations."""

    def visit(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
        dotted = _dotted(node) if isinstance(node, dict) else None
        if dotted is not None:
            yield path, dotted
        elif isinstance(node, dict):
            for key, value in node.items():
                yield from visit(value, (*path, str(key)))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from visit(value, (*path, str(index)))
        elif isinstance(node, str):
            yield path, node
            for inner in re.findall(r"\$\{([^}]*)\}", node):
                yield path, inner

    for section, content in doc.items():
        if section != "parameters":
            yield from visit(content, (section,))


def _mentions(reference: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", reference) is not None


def _secure_parameters(path: Path) -> set[str]:
    return {
        name
        for name, param in _bicep(path).get("parameters", {}).items()
        if any(decorator["type"] == "secure" for decorator in param["decorators"])
    }


def _decorator(param: dict[str, Any], type_: str) -> Any:
    for decorator in param["decorators"]:
        if decorator["type"] == type_:
            return decorator.get("argument")
    return None


def _setting_items(node: Any) -> Iterator[dict[str, Any]]:
    """The `{name, value}` items of an app-settings variable, both branches of a conditional."""
    if isinstance(node, list):
        yield from node
    else:
        operands = node["operator"]["operands"]
        assert node["operator"]["type"] == "conditional"
        yield from _setting_items(operands["true_value"])
        yield from _setting_items(operands["false_value"])


def _app_settings_by_variable() -> dict[str, dict[str, Any]]:
    """variable -> {setting name -> Bicep value} for `siteConfig.appSettings: concat(<variables>)`."""
    doc = _bicep(API)
    site = _resources(API, "Microsoft.Web/sites")["api"]
    concat = site["properties"]["siteConfig"]["appSettings"]["function"]
    assert concat["type"] == "concat"
    return {
        variable: {item["name"]: item["value"] for item in _setting_items(doc["variables"][variable]["value"])}
        for variable in concat["parameters"].values()
    }


def _app_settings() -> dict[str, Any]:
    """name -> Bicep value of every app setting the Function App can get."""
    settings: dict[str, Any] = {}
    for group in _app_settings_by_variable().values():
        assert not set(group) & set(settings), "a setting is set twice"
        settings |= group
    return settings


def _module_param_to_main(api_param: str) -> Any:
    return _body(_bicep(MAIN)["modules"]["api"])["params"][api_param]


def _deployment_parameters() -> dict[str, str]:
    raw = json.loads((INFRA / "main.parameters.json").read_text())
    return {name: entry["value"] for name, entry in raw["parameters"].items()}


def _main_parameter_behind(setting: str) -> str | None:
    """The main.bicep parameter a sync setting is passed straight through from, if any."""
    value = _app_settings()[setting]
    if isinstance(value, dict) and value.get("function", {}).get("type") == "string":
        value = value["function"]["parameters"]["value_to_convert"]
    if not isinstance(value, str) or value not in _bicep(API)["parameters"]:
        return None
    passed = _module_param_to_main(value)
    return passed if isinstance(passed, str) and passed in _bicep(MAIN)["parameters"] else None


def _env_from_deployment_defaults(*, dataverse_secret: bool) -> dict[str, str]:
    """The sync settings of a deployment with every optional parameter at its default, with
    or without a Dataverse client secret (its setting exists only with one)."""
    conditional = _app_settings_by_variable()["dataverseSecretSettings"]
    env: dict[str, str] = {}
    for setting in _app_settings():
        if setting not in ENV_NAMES or (setting in conditional and not dataverse_secret):
            continue
        param = _main_parameter_behind(setting)
        default = _bicep(MAIN)["parameters"][param]["default"] if param else None
        env[setting] = EXAMPLE_VALUES[setting] if default is None else str(default)
    if dataverse_secret:  # an app registration secret comes with its client id
        env["DATAVERSE_CLIENT_ID"] = "00000000-0000-0000-0000-000000000002"
    return env


# --- syntax --------------------------------------------------------------------------------------

_TREE_SITTER = Parser(Language(tree_sitter_bicep.language()))


def _syntax_errors(source: bytes) -> list[str]:
    problems: list[str] = []

    def visit(node: Node) -> None:
        if node.is_error or node.is_missing:
            problems.append(f"{node.start_point[0] + 1}:{node.start_point[1] + 1}: {node.type}")
        elif node.has_error:
            for child in node.children:
                visit(child)

    visit(_TREE_SITTER.parse(source).root_node)
    return problems


def test_infra_has_the_expected_bicep_files() -> None:
    names = {path.relative_to(INFRA).as_posix() for path in BICEP_FILES}
    assert {
        "main.bicep",
        "app/api.bicep",
        "app/storage.bicep",
        "app/monitoring.bicep",
        "app/keyvault.bicep",
        "app/identity.bicep",
        "app/rbac.bicep",
        "app/alerts.bicep",
    } <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_has_no_syntax_errors(path: Path) -> None:
    assert _syntax_errors(path.read_bytes()) == []


@pytest.mark.parametrize(
    "broken",
    [
        "param a string\nresource x 'A/b@2024-01-01' = {\n  name: 'x'\n",  # unclosed object
        "var s = 'unterminated\n",
        "var o = {\n  a: 1,,\n}\n",
    ],
)
def test_syntax_check_reports_broken_bicep(broken: str) -> None:
    assert _syntax_errors(broken.encode()) != []


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_parses_into_structure(path: Path) -> None:
    doc = _bicep(path)
    assert doc.get("resources") or doc.get("modules")


# --- modules resolve (what the compiler would check) --------------------------------------------


def _modules() -> Iterator[tuple[Path, str, dict[str, Any], Path]]:
    for path in BICEP_FILES:
        for symbol, module in _bicep(path).get("modules", {}).items():
            yield path, symbol, module, (path.parent / module["detail"]["path"]).resolve()


def test_modules_are_local_files_not_registry_modules() -> None:
    modules = list(_modules())
    assert modules
    for path, symbol, module, target in modules:
        assert module["type"] == "local", f"{path.name}:{symbol} is a {module['type']} module"
        assert target.is_file(), f"{path.name}:{symbol} points at missing {target}"


def test_module_calls_pass_every_required_parameter_and_no_unknown_one() -> None:
    for path, symbol, module, target in _modules():
        declared = _bicep(target)["parameters"]
        required = {name for name, param in declared.items() if param["default"] is None}
        passed = set(_body(module)["params"])
        assert passed <= set(declared), f"{path.name}:{symbol} passes unknown {passed - set(declared)}"
        assert required <= passed, f"{path.name}:{symbol} misses {required - passed}"


def test_module_outputs_used_are_declared() -> None:
    checked = 0
    for path in BICEP_FILES:
        targets = {symbol: target for p, symbol, _, target in _modules() if p == path}
        for _, reference in _references(_bicep(path)):
            for symbol, output in re.findall(r"(?<![\w.])(\w+)\.outputs\.(\w+)", reference):
                assert symbol in targets, f"{path.name}: {symbol} is not a module"
                assert output in _bicep(targets[symbol])["outputs"], f"{path.name}: {symbol}.outputs.{output}"
                checked += 1
    assert checked > 10


# --- resources -----------------------------------------------------------------------------------


def test_main_creates_the_resource_group_at_subscription_scope() -> None:
    doc = _bicep(MAIN)
    assert doc["globals"]["scope"]["value"] == "subscription"
    assert list(_resources(MAIN, "Microsoft.Resources/resourceGroups")) == ["rg"]
    assert {_body(module)["scope"] for module in doc["modules"].values()} == {"rg"}


def test_function_app_is_flex_consumption_on_python_311() -> None:
    _, plan = _one_resource("Microsoft.Web/serverfarms")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True  # Linux
    _, site = _one_resource("Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert "linuxFxVersion" not in site["properties"]["siteConfig"]


def test_flex_scale_settings_are_bounded_parameters() -> None:
    _, site = _one_resource("Microsoft.Web/sites")
    scale = site["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    params = _bicep(API)["parameters"]
    assert _decorator(params[scale["instanceMemoryMB"]], "allowed") == [512, 2048, 4096]
    assert _decorator(params[scale["maximumInstanceCount"]], "min_value") == 40
    assert _decorator(params[scale["maximumInstanceCount"]], "max_value") == 1000
    main = _bicep(MAIN)["parameters"]
    assert main["instanceMemoryMB"]["default"] == 2048
    assert main["maximumInstanceCount"]["default"] == 100


def test_deployment_package_is_read_with_the_user_assigned_identity() -> None:
    _, site = _one_resource("Microsoft.Web/sites")
    storage = site["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${blobEndpoint}${deploymentContainerName}"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }


def test_function_app_runs_as_the_user_assigned_identity_and_azd_finds_it() -> None:
    _, site = _one_resource("Microsoft.Web/sites")
    assert site["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {"'${identityId}'": {}}}
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    tags = site["tags"]["function"]
    assert tags["type"] == "union"
    assert tags["parameters"]["arg_2"] == {"'azd-service-name'": "api"}
    _, identity = _one_resource("Microsoft.ManagedIdentity/userAssignedIdentities")
    assert identity["name"] == "name"


def test_function_app_is_https_only_tls_12_without_ftp_or_basic_auth() -> None:
    _, site = _one_resource("Microsoft.Web/sites")
    assert site["properties"]["httpsOnly"] is True
    site_config = site["properties"]["siteConfig"]
    assert site_config["minTlsVersion"] == "1.2"
    assert site_config["scmMinTlsVersion"] == "1.2"
    assert site_config["ftpsState"] == "Disabled"
    policies = _resources(API, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body["name"]: body["properties"]["allow"] for body in policies.values()} == {"ftp": False, "scm": False}


def test_storage_has_no_shared_keys_and_serves_blob_table_and_queue() -> None:
    path, storage = _one_resource("Microsoft.Storage/storageAccounts")
    properties = storage["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True
    for service in ("blobServices", "tableServices", "queueServices"):
        assert _resources(path, f"Microsoft.Storage/storageAccounts/{service}"), service
    containers = _resources(path, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert [body["properties"]["publicAccess"] for body in containers.values()] == ["None"]


def test_application_insights_accepts_only_entra_authenticated_telemetry() -> None:
    _, insights = _one_resource("Microsoft.Insights/components")
    assert insights["properties"]["DisableLocalAuth"] is True
    assert _dotted(insights["properties"]["WorkspaceResourceId"]) == "logAnalytics.id"
    _one_resource("Microsoft.OperationalInsights/workspaces")
    settings = _app_settings()
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"


def test_key_vault_uses_rbac_and_soft_delete() -> None:
    _, vault = _one_resource("Microsoft.KeyVault/vaults")
    assert vault["properties"]["enableRbacAuthorization"] is True
    assert vault["properties"]["enableSoftDelete"] is True
    assert "accessPolicies" not in vault["properties"]


@pytest.mark.parametrize(("role", "role_id", "scope_type"), ROLES, ids=[role for role, _, _ in ROLES])
def test_identity_gets_role_on_its_resource(role: str, role_id: str, scope_type: str) -> None:
    path = INFRA / "app" / "rbac.bicep"
    doc = _bicep(path)
    assert doc["variables"]["roleIds"]["value"][role] == role_id
    assignments = [
        body
        for body in _resources(path, "Microsoft.Authorization/roleAssignments").values()
        if _dotted(body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"])
        == f"roleIds.{role}"
    ]
    assert len(assignments) == 1
    assignment = assignments[0]
    assert assignment["properties"]["principalId"] == "principalId"
    assert assignment["properties"]["principalType"] == "ServicePrincipal"
    scope = doc["resources"][assignment["scope"]]
    assert scope["type"] == scope_type
    # guid(scope, principal, role): redeploying finds the same assignment instead of a conflict
    name = assignment["name"]["function"]
    assert name["type"] == "guid"
    assert [_dotted(arg) for arg in name["parameters"].values()] == [
        f"{assignment['scope']}.id",
        "principalId",
        f"roleIds.{role}",
    ]


def test_app_waits_for_its_role_assignments() -> None:
    assert _body(_bicep(MAIN)["modules"]["api"])["dependsOn"] == ["rbac"]


def test_outputs_name_what_users_need() -> None:
    outputs = _bicep(MAIN)["outputs"]
    assert {
        "AZURE_LOCATION",
        "AZURE_TENANT_ID",
        "AZURE_FUNCTION_NAME",
        "SERVICE_API_NAME",
        "SERVICE_API_URI",
        "MARKETO_WEBHOOK_URL",
        "SYNC_TABLES_ENDPOINT",
        "AZURE_KEY_VAULT_NAME",
    } <= set(outputs)
    assert outputs["MARKETO_WEBHOOK_URL"]["value"] == "${api.outputs.uri}/api/marketo/sync-person"


# --- secrets ------------------------------------------------------------------------------------

# Where a secret parameter may flow in each file; anywhere else is a leak.
SECRET_SINKS = {
    "main.bicep": lambda path: (
        path[:4] == ("modules", "keyVault", "config", "params") or path[:2] == ("variables", "useDataverseSecret")
    ),
    "app/keyvault.bicep": lambda path: path[0] == "modules" and path[-1] == "value",
    "app/keyvault-secret.bicep": lambda path: path == ("resources", "secret", "config", "properties", "value"),
}


def test_secret_parameters_are_secure_and_flow_only_into_key_vault() -> None:
    assert _secure_parameters(MAIN) == {"marketoClientSecret", "dataverseClientSecret", "webhookSharedSecret"}
    flows = 0
    for path in BICEP_FILES:
        name = path.relative_to(INFRA).as_posix()
        secrets = _secure_parameters(path)
        if name not in SECRET_SINKS:
            assert secrets == set(), f"{name} must not receive secrets"
            continue
        for used_at, reference in _references(_bicep(path)):
            for secret in secrets:
                if _mentions(reference, secret):
                    assert SECRET_SINKS[name](used_at), f"{name}: {secret} used at {'.'.join(used_at)}"
                    flows += 1
    assert flows >= 8  # 4 in main (3 + the flag), 3 in keyvault, 1 in keyvault-secret


def test_key_vault_module_writes_the_secret_parameters_into_secrets() -> None:
    modules = _bicep(INFRA / "app" / "keyvault.bicep")["modules"]
    written = {_body(module)["params"]["name"]: _body(module)["params"]["value"] for module in modules.values()}
    assert written == {
        "marketo-client-secret": "marketoClientSecret",
        "dataverse-client-secret": "dataverseClientSecret",
        "webhook-shared-secret": "webhookSharedSecret",
    }
    # the Dataverse secret only exists when one was given (else: managed identity)
    assert modules["dataverseSecret"]["config"]["condition"] == "storeDataverseSecret"


def test_no_output_carries_a_secret() -> None:
    for path in BICEP_FILES:
        outputs = _bicep(path).get("outputs", {})
        for name, output in outputs.items():
            assert not any(d["type"] == "secure" for d in output["decorators"]), f"{path.name}:{name}"
            for _, reference in _references({"outputs": output}):
                for secret in _secure_parameters(path):
                    assert not _mentions(reference, secret), f"{path.name}:{name} mentions {secret}"
                assert "properties.value" not in reference, f"{path.name}:{name} reads a secret value"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_no_storage_keys_or_key_bearing_connection_strings(path: Path) -> None:
    text = path.read_text()
    for pattern in [r"\blist\w*\(", r"\.list\w*\(", "AccountKey", "primaryKey", "DefaultEndpointsProtocol"]:
        assert re.search(pattern, text) is None, f"{path.name} contains {pattern}"


def _secret_setting_names() -> set[str]:
    """Settings the code itself treats as secrets (typed SecretStr)."""
    return {
        env
        for env, field in ENV_NAMES.items()
        if SecretStr in getattr(Settings.model_fields[field].annotation, "__args__", ())
        or Settings.model_fields[field].annotation is SecretStr
    }


def test_secret_settings_are_the_expected_ones() -> None:
    assert _secret_setting_names() == {
        "MARKETO_CLIENT_SECRET",
        "DATAVERSE_CLIENT_SECRET",
        "DATAVERSE_STATIC_TOKEN",
        "AzureWebJobsStorage",
        "SYNC_TABLES_CONNECTION",
        "SYNC_QUEUE_CONNECTION",
        "WEBHOOK_SHARED_SECRET",
    }


def test_every_secret_setting_in_azure_is_a_key_vault_reference() -> None:
    settings = _app_settings()
    secret_settings = _secret_setting_names() & set(settings)
    assert secret_settings == {"MARKETO_CLIENT_SECRET", "DATAVERSE_CLIENT_SECRET", "WEBHOOK_SHARED_SECRET"}
    for name in secret_settings:
        assert isinstance(settings[name], str)
        assert KEY_VAULT_REFERENCE.match(settings[name]), f"{name} = {settings[name]!r}"


# --- app settings against sync_core/settings.py ------------------------------------------------


def test_every_setting_the_code_reads_is_set_in_azure() -> None:
    set_by_bicep = set(_app_settings())
    missing = []
    for name in set(ENV_NAMES) - NOT_SET_IN_AZURE:
        prefix = COVERED_BY_IDENTITY_FORM.get(name)
        covered = any(setting.startswith(prefix) for setting in set_by_bicep) if prefix else False
        if name not in set_by_bicep and not covered:
            missing.append(name)
    assert missing == []


def test_every_setting_set_in_azure_is_read_by_the_code_or_the_platform() -> None:
    assert set(_app_settings()) - set(ENV_NAMES) == PLATFORM_SETTINGS


def test_excluded_settings_are_read_by_the_code_and_not_set_in_azure() -> None:
    excluded = NOT_SET_IN_AZURE | set(COVERED_BY_IDENTITY_FORM)
    assert excluded <= set(ENV_NAMES)  # a stale exclusion would hide a renamed setting
    assert excluded & set(_app_settings()) == set()


@pytest.mark.parametrize("name", NOT_ON_FLEX)
def test_setting_unsupported_on_flex_is_not_set(name: str) -> None:
    assert name not in _app_settings()


def test_host_storage_settings_use_the_managed_identity() -> None:
    settings = _app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert settings["SYNC_TABLES_ENDPOINT"] == settings["AzureWebJobsStorage__tableServiceUri"] == "tableEndpoint"
    assert settings["SYNC_QUEUE_ENDPOINT"] == settings["AzureWebJobsStorage__queueServiceUri"] == "queueEndpoint"
    assert _dotted(_module_param_to_main("tableEndpoint")) == "storage.outputs.tableEndpoint"


@pytest.mark.parametrize("dataverse_secret", [False, True], ids=["managed-identity", "client-secret"])
def test_deployment_defaults_are_valid_settings_equal_to_the_code_defaults(dataverse_secret: bool) -> None:
    deployed = Settings.from_env(_env_from_deployment_defaults(dataverse_secret=dataverse_secret))
    required = [
        "MARKETO_BASE_URL",
        "MARKETO_CLIENT_ID",
        "MARKETO_CLIENT_SECRET",
        "DATAVERSE_URL",
        "SYNC_TABLES_ENDPOINT",
    ]
    code_defaults = Settings.from_env({name: EXAMPLE_VALUES[name] for name in required})
    defaulted = [
        "schedule",
        "field_map",
        "dynamics_delete_policy",
        "marketo_delete_policy",
        "table_prefix",
        "marketo_rate_share",
        "marketo_daily_quota",
        "dataverse_batch_size",
    ]
    assert {f: getattr(deployed, f) for f in defaulted} == {f: getattr(code_defaults, f) for f in defaulted}
    assert deployed.dataverse_uses_client_secret is dataverse_secret
    assert deployed.tables_endpoint == "https://stexample.table.core.windows.net"
    assert deployed.tables_connection_string is None  # tables via the managed identity
    # the job queue via the managed identity; the API budget shared by the instances Flex scales out to
    assert deployed.queue_endpoint == "https://stexample.queue.core.windows.net"
    assert deployed.queue_connection_string is None
    assert deployed.jobs_queue == code_defaults.jobs_queue
    assert deployed.background_share == code_defaults.background_share
    assert deployed.shared_budget is True


@pytest.mark.parametrize(
    ("param", "enum"),
    [("syncDynamicsDeletes", DynamicsDeletePolicy), ("syncMarketoDeletes", MarketoDeletePolicy)],
)
def test_delete_policy_parameter_allows_exactly_the_code_values(param: str, enum: type[Any]) -> None:
    for path in (MAIN, API):
        assert set(_decorator(_bicep(path)["parameters"][param], "allowed")) == {member.value for member in enum}


def test_every_sync_setting_is_a_deployment_parameter_of_the_same_name() -> None:
    """azd users set SYNC_SCHEDULE (etc.) in their environment and it lands in the app setting
    SYNC_SCHEDULE: the environment-variable name in main.parameters.json is the setting's name."""
    parameters = _deployment_parameters()
    checked = set()
    for setting in _app_settings():
        param = _main_parameter_behind(setting)
        if param is None:
            continue
        assert re.fullmatch(rf"\$\{{{setting}(=.*)?\}}", parameters[param]), f"{param}: {parameters[param]}"
        checked.add(setting)
    # the rest are secrets (own parameters, Key Vault), resource endpoints or computed
    endpoints = {"SYNC_TABLES_ENDPOINT", "SYNC_QUEUE_ENDPOINT"}
    assert checked == set(ENV_NAMES) - _secret_setting_names() - endpoints - {"DATAVERSE_TENANT_ID"}


def test_deployment_parameters_file_matches_main_bicep_and_its_defaults() -> None:
    declared = _bicep(MAIN)["parameters"]
    parameters = _deployment_parameters()
    assert set(parameters) == set(declared)
    for name, value in parameters.items():
        match = re.fullmatch(r"\$\{(\w+)(?:=(.*))?\}", value)
        assert match, f"{name}: {value}"
        default = declared[name]["default"]
        if default is None:  # required: azd prompts when the variable is unset
            assert match.group(2) is None, f"{name} is required but has a default in the file"
        else:
            bicep_default = str(default).lower() if isinstance(default, bool) else str(default)
            assert match.group(2) == bicep_default, f"{name}: {match.group(2)!r} != {bicep_default!r}"


# --- schedule, host.json, azure.yaml, checkov skips ---------------------------------------------


def test_schedule_default_is_a_six_field_ncrontab_every_five_minutes() -> None:
    bicep_default = _bicep(MAIN)["parameters"]["syncSchedule"]["default"]
    file_default = re.fullmatch(r"\$\{SYNC_SCHEDULE=(.*)\}", _deployment_parameters()["syncSchedule"])
    assert file_default is not None
    for expression in (bicep_default, file_default.group(1)):
        assert expression == DEFAULT_SCHEDULE
        assert len(expression.split()) == 6  # croniter also accepts 5 fields; the host does not
        assert croniter.is_valid(expression, second_at_beginning=True)
        runs = croniter(expression, datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC), second_at_beginning=True)
        first, second = runs.get_next(datetime), runs.get_next(datetime)
        assert (first, second - first) == (datetime(2026, 1, 1, 0, 5, tzinfo=UTC), timedelta(minutes=5))


def test_host_json_is_v2_with_bundle_4_and_a_timeout() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    timeout = re.fullmatch(r"(\d{2}):(\d{2}):(\d{2})", host["functionTimeout"])
    assert timeout, host["functionTimeout"]
    hours, minutes, seconds = (int(part) for part in timeout.groups())
    assert timedelta(minutes=1) <= timedelta(hours=hours, minutes=minutes, seconds=seconds) <= timedelta(hours=2)


def test_the_default_cycle_budget_is_well_inside_the_function_timeout() -> None:
    """A cycle stops taking new work at SYNC_CYCLE_BUDGET_SECONDS and still has to commit: the default
    (settings, Bicep, parameters file) leaves at least 30 % of host.json's functionTimeout for that."""
    host = json.loads((ROOT / "host.json").read_text())
    hours, minutes, seconds = (int(part) for part in host["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    bicep_default = _bicep(MAIN)["parameters"]["syncCycleBudgetSeconds"]["default"]
    file_default = re.fullmatch(
        r"\$\{SYNC_CYCLE_BUDGET_SECONDS=(\d+)\}", _deployment_parameters()["syncCycleBudgetSeconds"]
    )
    assert file_default is not None
    assert DEFAULT_CYCLE_BUDGET == int(bicep_default) == int(file_default.group(1))
    assert timeout * 0.7 >= DEFAULT_CYCLE_BUDGET


def test_azure_yaml_deploys_the_repository_root_as_the_api_function() -> None:
    text = (ROOT / "azure.yaml").read_text()
    service = re.search(r"^services:\n  api:\n((?:    \S.*\n)+)", text, flags=re.MULTILINE)
    assert service, text
    fields = dict(line.strip().split(": ", 1) for line in service.group(1).splitlines())
    assert fields == {"project": ".", "language": "python", "host": "function"}
    for needed in ("function_app.py", "host.json", "requirements.txt"):
        assert (ROOT / needed).is_file()
    ignored = (ROOT / ".funcignore").read_text().split()
    assert {"infra/", "tests/", "sandbox/"} <= set(ignored)


def test_every_skipped_checkov_check_is_justified_by_a_comment() -> None:
    lines = (INFRA / ".checkov.yaml").read_text().splitlines()
    start = lines.index("skip-check:")
    entries = 0
    for index in range(start + 1, len(lines)):
        line = lines[index].strip()
        if not line.startswith("- "):
            continue
        assert re.fullmatch(r"- CKV2?_AZURE_\d+", line), line
        above = index - 1
        while lines[above].strip().startswith("- "):
            above -= 1
        assert above > start, f"{line} has no reason above it"
        assert lines[above].strip().startswith("#"), f"{line} has no reason above it"
        entries += 1
    assert entries > 0


# --- alerts (infra/app/alerts.bicep, README "Operating > Alerts") --------------------------------

ALERTS = INFRA / "app" / "alerts.bicep"
ALERT_RULES = {
    "cycle-failed-in-a-row",
    "no-successful-cycle",
    "failures-backlog",
    "webhook-5xx",
    "daily-new-failures",
}
# main.bicep parameter -> (alerts.bicep parameter, default, azd environment variable)
ALERT_PARAMETERS = {
    "alertEmail": ("alertEmail", "", "ALERT_EMAIL"),
    "syncSchedulePeriodMinutes": ("schedulePeriodMinutes", 5, "SYNC_SCHEDULE_PERIOD_MINUTES"),
    "alertFailedCyclesInARow": ("failedCyclesInARow", 3, "ALERT_FAILED_CYCLES_IN_A_ROW"),
    "alertFailuresBacklog": ("failuresBacklogThreshold", 100, "ALERT_FAILURES_BACKLOG"),
    "alertWebhook5xxPercent": ("webhook5xxPercent", 10, "ALERT_WEBHOOK_5XX_PERCENT"),
}


def _alert_rules() -> dict[str, dict[str, Any]]:
    """name -> rule of the `rules` variable, its query with the text variables filled in."""
    variables = _bicep(ALERTS)["variables"]
    texts = {name: var["value"] for name, var in variables.items() if isinstance(var["value"], str)}
    rules = {}
    for rule in variables["rules"]["value"]:
        query = rule["query"]
        for name, text in texts.items():
            query = query.replace(f"${{{name}}}", text)
        rules[rule["name"]] = {**rule, "query": query}
    return rules


def test_the_action_group_e_mails_the_address_parameter_when_one_is_given() -> None:
    path, group = _one_resource("Microsoft.Insights/actionGroups")
    assert path == ALERTS
    assert group["location"] == "global"
    assert group["properties"]["enabled"] is True
    assert len(group["properties"]["groupShortName"]) <= 12  # the service's limit
    receivers = group["properties"]["emailReceivers"]["operator"]
    assert receivers["type"] == "conditional"
    assert receivers["operands"]["condition"]["function"] == {
        "type": "empty",
        "parameters": {"item_to_test": "alertEmail"},
    }
    assert receivers["operands"]["true_value"] == []
    [receiver] = receivers["operands"]["false_value"]
    assert receiver["emailAddress"] == "alertEmail"
    assert receiver["useCommonAlertSchema"] is True


def test_alert_parameters_flow_from_the_deployment_to_the_alerts_module() -> None:
    main = _bicep(MAIN)["parameters"]
    module = _body(_bicep(MAIN)["modules"]["alerts"])
    declared = _bicep(ALERTS)["parameters"]
    parameters = _deployment_parameters()
    for name, (alerts_param, default, env) in ALERT_PARAMETERS.items():
        assert main[name]["default"] == default, name
        assert module["params"][alerts_param] == name, name
        assert alerts_param in declared
        assert parameters[name] == f"${{{env}={default}}}", name
    assert _dotted(module["params"]["applicationInsightsName"]) == "monitoring.outputs.applicationInsightsName"


def test_schedule_period_parameter_matches_the_default_schedule() -> None:
    runs = croniter(DEFAULT_SCHEDULE, datetime(2026, 1, 1, tzinfo=UTC), second_at_beginning=True)
    first, second = runs.get_next(datetime), runs.get_next(datetime)
    assert _bicep(MAIN)["parameters"]["syncSchedulePeriodMinutes"]["default"] == (second - first) / timedelta(minutes=1)


def test_every_alert_rule_is_a_log_alert_on_application_insights_notifying_the_action_group() -> None:
    assert set(_alert_rules()) == ALERT_RULES
    [rules] = _resources(ALERTS, "Microsoft.Insights/scheduledQueryRules").values()
    assert rules["kind"] == "LogAlert"
    properties = rules["properties"]
    assert [_dotted(scope) for scope in properties["scopes"]] == ["applicationInsights.id"]
    assert [_dotted(group) for group in properties["actions"]["actionGroups"]] == ["actionGroup.id"]
    [condition] = properties["criteria"]["allOf"]
    assert _dotted(condition["query"]) == "rule.query"
    assert (condition["operator"], condition["threshold"]) == ("GreaterThan", 0)  # a rule fires when it returns rows
    insights = _bicep(ALERTS)["resources"]["applicationInsights"]
    assert (insights["type"], insights["existing"]) == ("Microsoft.Insights/components", True)


def test_alert_queries_read_the_telemetry_the_app_exports() -> None:
    from sync_core.core.models import RunReport
    from sync_core.core.report import DID_ITS_WORK, CycleReport, Outcome
    from sync_core.telemetry import CYCLE_EVENT, INSTRUMENTS
    from sync_core.telemetry.record import cycle_attributes

    full = RunReport(
        run_id="r",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        report=CycleReport.model_validate(
            {"failures": 1, "new_failures": 1, "backlog": {"marketo": 0, "retries": 1}, "seconds": 1}
        ),
    )
    event_keys = {"sync.event", *cycle_attributes(full)}
    metric_keys = {key for spec in INSTRUMENTS.values() for key in spec.attributes}
    rules = _alert_rules()
    for name, rule in rules.items():
        query = rule["query"]
        for key in re.findall(r'customDimensions\["([^"]+)"\]', query):
            assert key in (metric_keys if query.startswith("customMetrics") else event_keys), f"{name}: {key}"
        for metric in re.findall(r'\bname == "([^"]+)"', query):
            assert metric in INSTRUMENTS, f"{name}: {metric}"
        for outcome in re.findall(r'outcome[^|]*?"(\w+)"', query):
            assert outcome in {member.value for member in Outcome}, f"{name}: {outcome}"
    assert f'== "{CYCLE_EVENT}"' in _bicep(ALERTS)["variables"]["cycleEvents"]["value"]
    succeeded = _bicep(ALERTS)["variables"]["succeeded"]["value"]
    assert set(re.findall(r'"(\w+)"', succeeded)) == {outcome.value for outcome in DID_ITS_WORK}
    assert '"sync.backlog.part"]) == "retries"' in rules["failures-backlog"]["query"]
    assert rules["daily-new-failures"]["measure"] == "new_failures"
    assert rules["daily-new-failures"]["frequencyMinutes"] == 1440
    assert rules["daily-new-failures"]["autoMitigate"] is False  # a digest every day there is news


def test_the_webhook_alert_names_every_marketo_webhook_function() -> None:
    import function_app
    from sync_core.host.server import http_routes

    routes = http_routes(function_app.app)  # the app's get_functions() may run once per process
    webhooks = {name for name, route in routes.items() if route.startswith("marketo/")}
    assert len(webhooks) == 5
    assert "sync_person" in webhooks
    query = _alert_rules()["webhook-5xx"]["query"]
    assert query.startswith("requests ")
    [listed] = re.findall(r"where webhook in \(([^)]*)\)", query)
    assert set(re.findall(r'"(\w+)"', listed)) == webhooks
    assert "by webhook" in query  # each webhook's rate on its own: a busy one does not hide a failing one


def test_telemetry_settings_are_the_application_insights_one_in_azure_and_the_console_one_locally() -> None:
    from sync_core.settings import TELEMETRY_ENV_NAMES

    settings = _app_settings()
    assert set(TELEMETRY_ENV_NAMES) == {"APPLICATIONINSIGHTS_CONNECTION_STRING", "SYNC_TELEMETRY_CONSOLE"}
    assert _dotted(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == (
        "applicationInsights.properties.ConnectionString"
    )
    assert "SYNC_TELEMETRY_CONSOLE" not in settings  # stdout/stderr go to the host's logs: never in Azure
