// Key Vault (RBAC mode) holding the three secrets of the sync: the Marketo custom service secret,
// the Dataverse app registration secret (only when one is used; without it the app reaches
// Dataverse as its managed identity) and the webhook's shared secret. The secret values arrive
// as @secure() parameters and go nowhere else: the outputs are secret URIs, which the app
// settings turn into Key Vault references resolved by the managed identity (Key Vault Secrets
// User, rbac.bicep). Never output a secret value from here.

@description('Name of the key vault (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object

@description('Marketo custom service client secret.')
@secure()
param marketoClientSecret string

@description('Dataverse app registration client secret; empty when the app uses its managed identity.')
@secure()
param dataverseClientSecret string = ''

@description('Whether dataverseClientSecret holds a value (a plain flag, so no output has to look at the secret).')
param storeDataverseSecret bool

@description('Shared secret the Marketo webhook sends in the X-Sync-Secret header.')
@secure()
param webhookSharedSecret string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

module marketoSecret 'keyvault-secret.bicep' = {
  name: 'secret-marketo-client-secret'
  params: {
    keyVaultName: vault.name
    name: 'marketo-client-secret'
    value: marketoClientSecret
  }
}

module dataverseSecret 'keyvault-secret.bicep' = if (storeDataverseSecret) {
  name: 'secret-dataverse-client-secret'
  params: {
    keyVaultName: vault.name
    name: 'dataverse-client-secret'
    value: dataverseClientSecret
  }
}

module webhookSecret 'keyvault-secret.bicep' = {
  name: 'secret-webhook-shared-secret'
  params: {
    keyVaultName: vault.name
    name: 'webhook-shared-secret'
    value: webhookSharedSecret
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
output marketoClientSecretUri string = marketoSecret.outputs.uri
output dataverseClientSecretUri string = storeDataverseSecret ? dataverseSecret.outputs.uri : ''
output webhookSharedSecretUri string = webhookSecret.outputs.uri
