// The user-assigned managed identity the Function App runs as. It owns nothing but the identity:
// what the identity may do is granted in rbac.bicep, and where it is used (storage, Key Vault
// references, App Insights, the app's own tables, Dataverse when no client secret is given) is
// wired in api.bicep. A user-assigned identity (not system-assigned) so the role assignments
// exist before the app starts and survive re-creating the app.

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags for the resource.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
