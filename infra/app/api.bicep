// The Function App: a Flex Consumption plan (FC1, Linux) and the app on it, running as the
// user-assigned identity, with every setting the code reads (sync_core/settings.py, design §7)
// plus the platform settings the Functions host needs. Owns the mapping of parameters onto app
// settings; must not receive secret values: secrets arrive as Key Vault secret URIs and become
// `@Microsoft.KeyVault(SecretUri=…)` references resolved by the identity. No storage keys: the
// host reaches its storage through the identity-based `AzureWebJobsStorage__*` settings.
// Not set on purpose (Flex rejects them or they moved into functionAppConfig):
// FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE,
// WEBSITE_CONTENTSHARE, WEBSITE_CONTENTAZUREFILECONNECTIONSTRING, linuxFxVersion.

@description('Name of the Function App.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags for the resources (the app also gets azd-service-name: api).')
param tags object

@description('Resource id of the user-assigned managed identity the app runs as.')
param identityId string

@description('Client id of that identity (DefaultAzureCredential and the host pick it by this id).')
param identityClientId string

@description('Blob endpoint of the storage account, with the trailing slash.')
param blobEndpoint string

@description('Queue endpoint of the storage account.')
param queueEndpoint string

@description('Table endpoint of the storage account: the host storage and the sync state tables.')
param tableEndpoint string

@description('Blob container for the deployment package.')
param deploymentContainerName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Memory per instance, MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Upper bound of instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int

@description('MARKETO_BASE_URL')
param marketoBaseUrl string

@description('MARKETO_CLIENT_ID')
param marketoClientId string

@description('Key Vault secret URI of MARKETO_CLIENT_SECRET.')
param marketoClientSecretUri string

@description('DATAVERSE_URL')
param dataverseUrl string

@description('DATAVERSE_TENANT_ID')
param dataverseTenantId string

@description('DATAVERSE_CLIENT_ID (empty: the app reaches Dataverse as its managed identity).')
param dataverseClientId string

@description('Key Vault secret URI of DATAVERSE_CLIENT_SECRET; empty when there is none.')
param dataverseClientSecretUri string

@description('Key Vault secret URI of WEBHOOK_SHARED_SECRET.')
param webhookSharedSecretUri string

@description('SYNC_SCHEDULE: six-field NCRONTAB, UTC.')
param syncSchedule string

@description('SYNC_FIELD_MAP: inline JSON or a path; empty for the field map shipped with the code.')
param syncFieldMap string

@description('SYNC_DYNAMICS_DELETES')
@allowed([
  'flag'
  'ignore'
])
param syncDynamicsDeletes string

@description('SYNC_MARKETO_DELETES')
@allowed([
  'ignore'
  'delete'
])
param syncMarketoDeletes string

@description('SYNC_TABLE_PREFIX')
param syncTablePrefix string

@description('MARKETO_RATE_SHARE (a decimal in (0, 1], as text: Bicep has no float type).')
param marketoRateShare string

@description('MARKETO_DAILY_QUOTA')
param marketoDailyQuota int

@description('DATAVERSE_BATCH_SIZE')
param dataverseBatchSize int

@description('DATAVERSE_MAX_PARALLEL')
param dataverseMaxParallel int

@description('SYNC_LEASE_SECONDS')
param syncLeaseSeconds int

@description('SYNC_CYCLE_BUDGET_SECONDS')
param syncCycleBudgetSeconds int

@description('WEBHOOK_DEADLINE_SECONDS (whole seconds, 1-25)')
param webhookDeadlineSeconds int

@description('SYNC_JOBS_QUEUE')
param syncJobsQueue string

@description('SYNC_SHARED_BUDGET')
param syncSharedBudget bool

@description('SYNC_BACKGROUND_SHARE (a decimal in (0, 1], as text: Bicep has no float type).')
param syncBackgroundShare string

@description('SYNC_RETENTION_RUN_REPORTS_DAYS')
param syncRetentionRunReportsDays int

@description('SYNC_RETENTION_COLLISIONS_DAYS')
param syncRetentionCollisionsDays int

@description('SYNC_RETENTION_CLAIMS_DAYS')
param syncRetentionClaimsDays int

@description('DATAVERSE_SYNC_FILTER_FIELD (empty: no filter column)')
param dataverseSyncFilterField string

@description('DATAVERSE_SYNC_FILTER')
param dataverseSyncFilter string

@description('MARKETO_SYNC_FILTER_FIELD')
param marketoSyncFilterField string

@description('MARKETO_SYNC_FILTER')
param marketoSyncFilter string
@description('SYNC_INITIAL_LEAD_WINNER')
param syncInitialLeadWinner string

@description('SYNC_INITIAL_CONTACT_WINNER')
param syncInitialContactWinner string

@description('SYNC_INITIAL_MARKETO_ONLY')
param syncInitialMarketoOnly string

@description('SYNC_INITIAL_API_SHARE')
param syncInitialApiShare string

// What the Functions host and the Azure SDKs read; the code itself reads none of these.
var platformSettings = [
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
  { name: 'AzureWebJobsStorage__blobServiceUri', value: blobEndpoint }
  { name: 'AzureWebJobsStorage__queueServiceUri', value: queueEndpoint }
  { name: 'AzureWebJobsStorage__tableServiceUri', value: tableEndpoint }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: applicationInsights.properties.ConnectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
  // DefaultAzureCredential in the app (tables, Dataverse without a secret) signs in as this identity.
  { name: 'AZURE_CLIENT_ID', value: identityClientId }
]

// The settings of sync_core/settings.py. Secrets only as Key Vault references.
var syncSettings = [
  { name: 'MARKETO_BASE_URL', value: marketoBaseUrl }
  { name: 'MARKETO_CLIENT_ID', value: marketoClientId }
  { name: 'MARKETO_CLIENT_SECRET', value: '@Microsoft.KeyVault(SecretUri=${marketoClientSecretUri})' }
  { name: 'DATAVERSE_URL', value: dataverseUrl }
  { name: 'DATAVERSE_TENANT_ID', value: dataverseTenantId }
  { name: 'DATAVERSE_CLIENT_ID', value: dataverseClientId }
  { name: 'SYNC_TABLES_ENDPOINT', value: tableEndpoint }
  { name: 'SYNC_SCHEDULE', value: syncSchedule }
  { name: 'SYNC_FIELD_MAP', value: syncFieldMap }
  { name: 'WEBHOOK_SHARED_SECRET', value: '@Microsoft.KeyVault(SecretUri=${webhookSharedSecretUri})' }
  { name: 'SYNC_DYNAMICS_DELETES', value: syncDynamicsDeletes }
  { name: 'SYNC_MARKETO_DELETES', value: syncMarketoDeletes }
  { name: 'SYNC_TABLE_PREFIX', value: syncTablePrefix }
  { name: 'MARKETO_RATE_SHARE', value: marketoRateShare }
  { name: 'MARKETO_DAILY_QUOTA', value: string(marketoDailyQuota) }
  { name: 'DATAVERSE_BATCH_SIZE', value: string(dataverseBatchSize) }
  { name: 'DATAVERSE_MAX_PARALLEL', value: string(dataverseMaxParallel) }
  { name: 'SYNC_LEASE_SECONDS', value: string(syncLeaseSeconds) }
  { name: 'SYNC_CYCLE_BUDGET_SECONDS', value: string(syncCycleBudgetSeconds) }
  { name: 'WEBHOOK_DEADLINE_SECONDS', value: string(webhookDeadlineSeconds) }
  { name: 'SYNC_QUEUE_ENDPOINT', value: queueEndpoint }
  { name: 'SYNC_JOBS_QUEUE', value: syncJobsQueue }
  { name: 'SYNC_SHARED_BUDGET', value: string(syncSharedBudget) }
  { name: 'SYNC_BACKGROUND_SHARE', value: syncBackgroundShare }
  { name: 'SYNC_RETENTION_RUN_REPORTS_DAYS', value: string(syncRetentionRunReportsDays) }
  { name: 'SYNC_RETENTION_COLLISIONS_DAYS', value: string(syncRetentionCollisionsDays) }
  { name: 'SYNC_RETENTION_CLAIMS_DAYS', value: string(syncRetentionClaimsDays) }
  { name: 'DATAVERSE_SYNC_FILTER_FIELD', value: dataverseSyncFilterField }
  { name: 'DATAVERSE_SYNC_FILTER', value: dataverseSyncFilter }
  { name: 'MARKETO_SYNC_FILTER_FIELD', value: marketoSyncFilterField }
  { name: 'MARKETO_SYNC_FILTER', value: marketoSyncFilter }
  { name: 'SYNC_INITIAL_LEAD_WINNER', value: syncInitialLeadWinner }
  { name: 'SYNC_INITIAL_CONTACT_WINNER', value: syncInitialContactWinner }
  { name: 'SYNC_INITIAL_MARKETO_ONLY', value: syncInitialMarketoOnly }
  { name: 'SYNC_INITIAL_API_SHARE', value: syncInitialApiShare }
]

// Only with an app registration secret: a reference to a secret that does not exist would leave
// the setting unresolved, and without the setting the app uses its managed identity instead.
var dataverseSecretSettings = empty(dataverseClientSecretUri) ? [] : [
  { name: 'DATAVERSE_CLIENT_SECRET', value: '@Microsoft.KeyVault(SecretUri=${dataverseClientSecretUri})' }
]

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource api 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // Set at creation, so the host never starts without its storage and Key Vault references.
      appSettings: concat(platformSettings, syncSettings, dataverseSecretSettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No FTP and no basic-auth deployments: azd and az deploy to Flex with Entra tokens.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: api
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: api
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = api.name
output uri string = 'https://${api.properties.defaultHostName}'
