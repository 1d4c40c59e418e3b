// Entry point of the deployment (`azd up`, or `az deployment sub create`): creates the resource
// group and the modules of app/, names every resource from the environment name, and maps the
// deployment parameters onto the app's settings (design §7). Secret parameters go straight into
// Key Vault; the app gets only Key Vault references. Must not put a secret into a variable, a
// plain app setting or an output.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); seeds the resource names.')
param environmentName string

@minLength(1)
@description('Region of all resources; it must offer Flex Consumption.')
param location string

@description('Resource group name; empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Memory per instance of the Function App, MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound of instances the Function App scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Replication of the storage account (sync state, host storage, deployment package).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSkuName string = 'Standard_GRS'

@minLength(1)
@description('MARKETO_BASE_URL, e.g. https://123-ABC-456.mktorest.com (Admin > Web Services > REST API).')
param marketoBaseUrl string

@minLength(1)
@description('MARKETO_CLIENT_ID of the Marketo custom service.')
param marketoClientId string

@minLength(1)
@secure()
@description('Client secret of the Marketo custom service; stored in Key Vault only.')
param marketoClientSecret string

@minLength(1)
@description('DATAVERSE_URL, e.g. https://contoso.crm.dynamics.com')
param dataverseUrl string

@description('DATAVERSE_TENANT_ID; empty: the tenant of this subscription.')
param dataverseTenantId string = ''

@description('DATAVERSE_CLIENT_ID of the app registration; empty: the app reaches Dataverse as its managed identity.')
param dataverseClientId string = ''

@secure()
@description('Client secret of the Dataverse app registration; stored in Key Vault only. Empty: managed identity.')
param dataverseClientSecret string = ''

@minLength(16)
@secure()
@description('Shared secret the Marketo webhook sends in X-Sync-Secret; stored in Key Vault only.')
param webhookSharedSecret string

@description('SYNC_SCHEDULE: when the sync cycle runs, six-field NCRONTAB (second minute hour day month weekday), UTC.')
param syncSchedule string = '0 */5 * * * *'

@description('SYNC_FIELD_MAP: inline JSON of the field map; empty: the map shipped with the code.')
param syncFieldMap string = ''

@description('SYNC_DYNAMICS_DELETES: flag (set microsoftIsDeleted and unlink) or ignore (unlink only).')
@allowed([
  'flag'
  'ignore'
])
param syncDynamicsDeletes string = 'flag'

@description('SYNC_MARKETO_DELETES: ignore (not sent to Dynamics) or delete (delete the linked record too).')
@allowed([
  'ignore'
  'delete'
])
param syncMarketoDeletes string = 'ignore'

@description('SYNC_TABLE_PREFIX: prefix of the sync state tables.')
param syncTablePrefix string = 'sync'

@description('MARKETO_RATE_SHARE: share of the Marketo API rate limits this app may use, a decimal in (0, 1].')
param marketoRateShare string = '0.5'

@description('MARKETO_DAILY_QUOTA: the Marketo instance\'s daily API call quota.')
@minValue(1)
param marketoDailyQuota int = 50000

@description('DATAVERSE_BATCH_SIZE: records per UpdateMultiple/UpsertMultiple call.')
@minValue(1)
@maxValue(1000)
param dataverseBatchSize int = 1000

@description('DATAVERSE_MAX_PARALLEL: bulk messages in flight at once (x-ms-dop-hint, capped by this).')
@minValue(1)
@maxValue(52)
param dataverseMaxParallel int = 8

@description('SYNC_LEASE_SECONDS: the cycle lease, renewed every third of it; a crashed cycle blocks the next for at most this long.')
@minValue(3)
@maxValue(3600)
param syncLeaseSeconds int = 90

@description('SYNC_CYCLE_BUDGET_SECONDS: a cycle stops taking new work after this long and the next tick continues; keep it well inside host.json functionTimeout (30 min).')
@minValue(10)
@maxValue(86400)
param syncCycleBudgetSeconds int = 1200

@description('WEBHOOK_DEADLINE_SECONDS: the webhook answers 503 + Retry-After rather than run past this (Marketo waits 30 s).')
@minValue(1)
@maxValue(25)
param webhookDeadlineSeconds int = 20

@description('SYNC_JOBS_QUEUE: the queue of chunked jobs (field backfill), created with its poison queue `<name>-poison`.')
@minLength(3)
@maxLength(57)
param syncJobsQueue string = 'sync-jobs'

@description('SYNC_SHARED_BUDGET: keep the API budget (Marketo 100 calls/20 s, 10 in flight; Dataverse limits) in the state tables for every instance, not per instance. On by default: Flex Consumption scales out.')
param syncSharedBudget bool = true

@description('SYNC_BACKGROUND_SHARE: the share of each API limit chunked jobs may use, the rest kept for the cycle and the webhook (a decimal in (0, 1], as text).')
param syncBackgroundShare string = '0.5'

@description('SYNC_RETENTION_RUN_REPORTS_DAYS: days a run report is kept (README "What the sync keeps").')
@minValue(1)
@maxValue(3650)
param syncRetentionRunReportsDays int = 30

@description('SYNC_RETENTION_COLLISIONS_DAYS: days a collision (with both sides\' values) is kept.')
@minValue(1)
@maxValue(3650)
param syncRetentionCollisionsDays int = 90

@description('SYNC_RETENTION_CLAIMS_DAYS: days a webhook claim is kept.')
@minValue(1)
@maxValue(3650)
param syncRetentionClaimsDays int = 1

@description('DATAVERSE_SYNC_FILTER_FIELD: a Two Options column on lead and contact; only No keeps a record out (README "Which records sync"). Empty: none.')
param dataverseSyncFilterField string = 'new_synctomkto'

@description('DATAVERSE_SYNC_FILTER: a condition on Dataverse columns a record must meet to sync, e.g. statecode eq 0 (empty: none).')
param dataverseSyncFilter string = ''

@description('MARKETO_SYNC_FILTER_FIELD: a Boolean person field; only false keeps a person out (empty: none).')
param marketoSyncFilterField string = ''

@description('MARKETO_SYNC_FILTER: a condition on person fields a person must meet to sync, e.g. leadSource ne \'Partner\' (empty: none).')
param marketoSyncFilter string = ''

@description('E-mail address the alerts go to (README "Operating > Alerts"); empty: alerts show in the portal only.')
param alertEmail string = ''

@description('Minutes between two runs of SYNC_SCHEDULE, for the alert "no successful cycle for 3 periods" (5 for the default schedule).')
@minValue(1)
@maxValue(1440)
param syncSchedulePeriodMinutes int = 5

@description('Cycles that end failed one after the other before the alert fires.')
@minValue(1)
@maxValue(20)
param alertFailedCyclesInARow int = 3

@description('Open record failures above which the failures-backlog alert fires.')
@minValue(1)
param alertFailuresBacklog int = 100

@description('Share of webhook calls answered 5xx over 15 minutes, in percent, above which the alert fires.')
@minValue(1)
@maxValue(100)
param alertWebhook5xxPercent int = 10
@description('SYNC_INITIAL_LEAD_WINNER: who wins a field a lead and its person hold differently when the initial sync links them.')
@allowed(['marketo', 'dynamics'])
param syncInitialLeadWinner string = 'marketo'

@description('SYNC_INITIAL_CONTACT_WINNER: who wins a field a contact and its person hold differently when the initial sync links them.')
@allowed(['marketo', 'dynamics'])
param syncInitialContactWinner string = 'dynamics'

@description('SYNC_INITIAL_MARKETO_ONLY: what the initial sync does with Marketo-only persons (leave, as native; or create-lead).')
@allowed(['leave', 'create-lead'])
param syncInitialMarketoOnly string = 'leave'

@description('SYNC_INITIAL_API_SHARE: the share of the app\'s API budget the initial sync takes (0-1, as text).')
param syncInitialApiShare string = '0.5'

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.webSitesFunctions}sync-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
// A plain flag, so that nothing downstream has to inspect the secret to know whether it exists.
var useDataverseSecret = !empty(dataverseClientSecret)

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? '${abbrs.resourcesResourceGroups}${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}sync-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    location: location
    tags: tags
    namePrefix: '${abbrs.insightsScheduledQueryRules}sync-${resourceToken}'
    actionGroupName: '${abbrs.insightsActionGroups}sync-${resourceToken}'
    alertEmail: alertEmail
    schedulePeriodMinutes: syncSchedulePeriodMinutes
    failedCyclesInARow: alertFailedCyclesInARow
    failuresBacklogThreshold: alertFailuresBacklog
    webhook5xxPercent: alertWebhook5xxPercent
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    skuName: storageSkuName
    jobsQueueName: syncJobsQueue
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    marketoClientSecret: marketoClientSecret
    dataverseClientSecret: dataverseClientSecret
    storeDataverseSecret: useDataverseSecret
    webhookSharedSecret: webhookSharedSecret
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  // The roles exist before the app first starts, so its storage, Key Vault references and
  // telemetry work from the first cold start.
  dependsOn: [
    rbac
  ]
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    marketoBaseUrl: marketoBaseUrl
    marketoClientId: marketoClientId
    marketoClientSecretUri: keyVault.outputs.marketoClientSecretUri
    dataverseUrl: dataverseUrl
    dataverseTenantId: empty(dataverseTenantId) ? tenant().tenantId : dataverseTenantId
    dataverseClientId: dataverseClientId
    dataverseClientSecretUri: keyVault.outputs.dataverseClientSecretUri
    webhookSharedSecretUri: keyVault.outputs.webhookSharedSecretUri
    syncSchedule: syncSchedule
    syncFieldMap: syncFieldMap
    syncDynamicsDeletes: syncDynamicsDeletes
    syncMarketoDeletes: syncMarketoDeletes
    syncTablePrefix: syncTablePrefix
    marketoRateShare: marketoRateShare
    marketoDailyQuota: marketoDailyQuota
    dataverseBatchSize: dataverseBatchSize
    dataverseMaxParallel: dataverseMaxParallel
    syncLeaseSeconds: syncLeaseSeconds
    syncCycleBudgetSeconds: syncCycleBudgetSeconds
    webhookDeadlineSeconds: webhookDeadlineSeconds
    syncJobsQueue: syncJobsQueue
    syncSharedBudget: syncSharedBudget
    syncBackgroundShare: syncBackgroundShare

    syncRetentionRunReportsDays: syncRetentionRunReportsDays
    syncRetentionCollisionsDays: syncRetentionCollisionsDays
    syncRetentionClaimsDays: syncRetentionClaimsDays
    dataverseSyncFilterField: dataverseSyncFilterField
    dataverseSyncFilter: dataverseSyncFilter
    marketoSyncFilterField: marketoSyncFilterField
    marketoSyncFilter: marketoSyncFilter
    syncInitialLeadWinner: syncInitialLeadWinner
    syncInitialContactWinner: syncInitialContactWinner
    syncInitialMarketoOnly: syncInitialMarketoOnly
    syncInitialApiShare: syncInitialApiShare
  }
}

// What azd writes into .azure/<env>/.env and a user needs next (README "Deploy").
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output MARKETO_WEBHOOK_URL string = '${api.outputs.uri}/api/marketo/sync-person'
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output SYNC_TABLES_ENDPOINT string = storage.outputs.tableEndpoint
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri
output AZURE_IDENTITY_NAME string = identity.outputs.name
output AZURE_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_ALERT_ACTION_GROUP string = alerts.outputs.actionGroupName
