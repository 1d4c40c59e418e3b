// Alert rules on the app's telemetry in Application Insights, and the action group they notify
// (README "Operating > Alerts"). The queries read what sync_core/telemetry exports: one
// `sync.cycle` event per cycle in `traces` (customDimensions sync.outcome, sync.failures.new,
// sync.backlog.retries, ...), the `sync.backlog` gauge in `customMetrics`, and the Functions host's
// own `requests` rows for the webhook function. A rule that returns rows fires. Holds no secrets;
// the e-mail address is the only personal data here and goes only into the action group.

@description('Name of the Application Insights component the rules query.')
param applicationInsightsName string

@description('Azure region of the alert rules.')
param location string

@description('Tags for the resources.')
param tags object

@description('Prefix of the alert rules\' names.')
param namePrefix string

@description('Name of the action group.')
param actionGroupName string

@description('Where alerts are e-mailed; empty: the action group has no receiver (alerts show in the portal only).')
param alertEmail string = ''

@description('Minutes between two runs of SYNC_SCHEDULE (5 for the default 0 */5 * * * *).')
@minValue(1)
@maxValue(1440)
param schedulePeriodMinutes int = 5

@description('Cycles that end failed one after the other before the alert fires.')
@minValue(1)
@maxValue(20)
param failedCyclesInARow int = 3

@description('Open record failures (the failures backlog) above which the alert fires.')
@minValue(1)
param failuresBacklogThreshold int = 100

@description('Share of webhook calls answered 5xx, in percent, over 15 minutes, above which the alert fires.')
@minValue(1)
@maxValue(100)
param webhook5xxPercent int = 10

@description('Fewest webhook calls in 15 minutes for the 5xx rate to count.')
@minValue(1)
param webhookMinimumCalls int = 5

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'syncalerts'
    enabled: true
    emailReceivers: empty(alertEmail) ? [] : [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// The cycle events, and the outcomes that count as a cycle that did its work (core.report).
var cycleEvents = 'traces | where tostring(customDimensions["sync.event"]) == "sync.cycle"'
var succeeded = '("ok", "partial")'
// Enough history to hold the last N cycles even when some ticks were skipped.
var failedLookbackMinutes = (failedCyclesInARow + 1) * schedulePeriodMinutes * 2
var silentMinutes = 3 * schedulePeriodMinutes
var backlogLookbackMinutes = 6 * schedulePeriodMinutes

var rules = [
  {
    name: 'cycle-failed-in-a-row'
    displayName: 'Sync: the cycle failed ${failedCyclesInARow} times in a row'
    description: 'The last ${failedCyclesInARow} cycles (lease_held aside) ended transient, quota, lease_lost or error. Read their reason on the status page (/api/status) or with python -m sync_core status.'
    severity: 1
    frequencyMinutes: 5
    lookbackMinutes: failedLookbackMinutes
    autoMitigate: true
    measure: ''
    query: '${cycleEvents} | where timestamp > ago(${failedLookbackMinutes}m) | extend outcome = tostring(customDimensions["sync.outcome"]) | where outcome != "lease_held" | top ${failedCyclesInARow} by timestamp desc | summarize cycles = count(), failed = countif(outcome !in ${succeeded}), last_run = take_anyif(tostring(customDimensions["sync.run_id"]), outcome !in ${succeeded}) | where cycles == ${failedCyclesInARow} and failed == ${failedCyclesInARow}'
  }
  {
    name: 'no-successful-cycle'
    displayName: 'Sync: no successful cycle for ${silentMinutes} minutes'
    description: 'No cycle ended ok or partial in 3 schedule periods: the timer does not run, every cycle fails, or one runs longer than that.'
    severity: 1
    frequencyMinutes: 5
    lookbackMinutes: silentMinutes
    autoMitigate: true
    measure: ''
    query: 'let n = toscalar(${cycleEvents} | where timestamp > ago(${silentMinutes}m) | where tostring(customDimensions["sync.outcome"]) in ${succeeded} | count); print successes = n | where successes == 0'
  }
  {
    name: 'failures-backlog'
    displayName: 'Sync: more than ${failuresBacklogThreshold} open record failures'
    description: 'The sync.backlog gauge (part retries) after the last cycle is above the threshold: records Dynamics or Marketo refuse pile up. The status page lists them with their reasons.'
    severity: 2
    frequencyMinutes: 15
    lookbackMinutes: backlogLookbackMinutes
    autoMitigate: true
    measure: ''
    query: 'customMetrics | where timestamp > ago(${backlogLookbackMinutes}m) | where name == "sync.backlog" and tostring(customDimensions["sync.backlog.part"]) == "retries" | top 1 by timestamp desc | where value > ${failuresBacklogThreshold} | project open_failures = value'
  }
  {
    name: 'webhook-5xx'
    displayName: 'Sync: more than ${webhook5xxPercent}% of webhook calls answered 5xx'
    description: 'A Marketo webhook (Sync Person to Microsoft or a flow step) answered 5xx to more than ${webhook5xxPercent}% of at least ${webhookMinimumCalls} calls in 15 minutes (Marketo or Dataverse down or throttled, the deadline, or a broken configuration); one row per webhook that did.'
    severity: 2
    frequencyMinutes: 5
    lookbackMinutes: 15
    autoMitigate: true
    measure: ''
    query: 'requests | where timestamp > ago(15m) | extend webhook = iff(isempty(operation_Name), name, operation_Name) | where webhook in ("sync_person", "change_owner", "create_task", "add_to_campaign", "remove_from_campaign") | summarize calls = count(), errors = countif(toint(resultCode) >= 500) by webhook | where calls >= ${webhookMinimumCalls} and errors * 100.0 / calls > ${webhook5xxPercent} | project webhook, calls, errors, error_percent = round(errors * 100.0 / calls, 1)'
  }
  {
    name: 'daily-new-failures'
    displayName: 'Sync: daily digest of new record failures'
    description: 'Once a day: how many records failed for the first time in the last 24 hours, and how many are open. The list, with reasons, ids and next retry: the status page or python -m sync_core status --format text.'
    severity: 3
    frequencyMinutes: 1440
    lookbackMinutes: 1440
    autoMitigate: false
    measure: 'new_failures'
    query: '${cycleEvents} | where timestamp > ago(1d) | extend new_in_cycle = toint(customDimensions["sync.failures.new"]), open_after = toint(customDimensions["sync.backlog.retries"]) | summarize new_failures = sum(new_in_cycle), cycles_with_new_failures = countif(new_in_cycle > 0), arg_max(timestamp, open_after) | where new_failures > 0 | project new_failures, cycles_with_new_failures, open_failures = open_after'
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for rule in rules: {
    name: '${namePrefix}-${rule.name}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: rule.displayName
      description: rule.description
      severity: rule.severity
      enabled: true
      scopes: [
        applicationInsights.id
      ]
      evaluationFrequency: 'PT${rule.frequencyMinutes}M'
      windowSize: 'PT${rule.frequencyMinutes}M'
      // The queries filter on their own lookback; the time range only has to cover it (2 days at most).
      overrideQueryTimeRange: 'PT${min(max(rule.lookbackMinutes, rule.frequencyMinutes), 2880)}M'
      autoMitigate: rule.autoMitigate
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: empty(rule.measure) ? 'Count' : 'Total'
            metricMeasureColumn: empty(rule.measure) ? null : rule.measure
            operator: 'GreaterThan'
            threshold: 0
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      actions: {
        actionGroups: [
          actionGroup.id
        ]
      }
    }
  }
]

output actionGroupName string = actionGroup.name
output alertRuleNames array = [for (rule, index) in rules: alertRules[index].name]
