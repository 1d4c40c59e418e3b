// One secret in the sync's key vault, written from a @secure() parameter. The only place a
// secret resource is declared, so every secret gets the same properties; it outputs the
// versionless secret URI (for a Key Vault reference), never the value.

@description('Name of the existing key vault.')
param keyVaultName string

@description('Name of the secret.')
param name string

@description('Value of the secret.')
@secure()
param value string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: name
  properties: {
    value: value
    contentType: 'text/plain'
  }
}

// Versionless: a new version of the secret reaches the app without a redeployment.
output uri string = secret.properties.secretUri
