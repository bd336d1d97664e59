<#
.SYNOPSIS
  Installs the Mini Connector agent as a Windows service.

.DESCRIPTION
  Run in an elevated PowerShell (Administrator), from the folder holding mini-connector.exe:

    .\install.ps1 -ApiKey vmc_... -RelayUrl wss://relay.example.com [-Name NAME] [-Exe PATH] [-DryRun]

  1. copies mini-connector.exe to %ProgramFiles%\MiniConnector
  2. creates %ProgramData%\MiniConnector, readable and writable by SYSTEM and
     Administrators only (inheritance removed), where the config, keys, spool and logs live
  3. runs 'mini-connector configure' (the API key is encrypted into the config there)
  4. runs 'mini-connector service install': registers and starts the service MiniConnector
     (automatic start, LocalSystem, restart on failure)
  5. runs 'mini-connector diagnose'
  -DryRun prints the steps and changes nothing. The API key is never printed.
  Not tested by this project's CI, which runs on Linux: see docs/OPERATIONS.md.
#>
[CmdletBinding()]
param(
  [Parameter(Mandatory = $true)] [string] $ApiKey,
  [Parameter(Mandatory = $true)] [string] $RelayUrl,
  [string] $Name = $env:COMPUTERNAME,
  [string] $Exe = (Join-Path $PSScriptRoot "mini-connector.exe"),
  [switch] $DryRun
)
$ErrorActionPreference = "Stop"

$InstallDir = Join-Path $env:ProgramFiles "MiniConnector"
$StateDir = Join-Path $env:ProgramData "MiniConnector"
$Config = Join-Path $StateDir "agent.toml"
$Target = Join-Path $InstallDir "mini-connector.exe"
$ShownKey = if ($ApiKey.Length -gt 12) { $ApiKey.Substring(0, 12) + "..." } else { "****" }

function Step([string] $Show, [scriptblock] $Action) {
  if ($DryRun) { Write-Output "would run: $Show"; return }
  Write-Output "+ $Show"
  & $Action
  if ($LASTEXITCODE -and $LASTEXITCODE -ne 0) { throw "step failed (exit $LASTEXITCODE): $Show" }
}

if (-not $ApiKey.StartsWith("vmc_")) { throw "the API key must start with 'vmc_'" }
if (-not (Test-Path $Exe)) { throw "mini-connector.exe not found at ${Exe}: pass -Exe PATH" }
if (-not $DryRun) {
  $admin = ([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()
           ).IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
  if (-not $admin) { throw "run this in an elevated PowerShell (Run as Administrator)" }
}

Step "copy $Exe to $Target" {
  New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
  Copy-Item -Force $Exe $Target
}
Step "create $StateDir for SYSTEM and Administrators only" {
  New-Item -ItemType Directory -Force -Path $StateDir | Out-Null
  # By SID, so it works in every language: S-1-5-18 SYSTEM, S-1-5-32-544 Administrators.
  icacls $StateDir /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" | Out-Null
}
Step "$Target --config $Config configure --relay-url $RelayUrl --api-key $ShownKey --name $Name" {
  & $Target --config $Config configure --relay-url $RelayUrl --api-key $ApiKey --name $Name
}
Step "$Target --config $Config service install" {
  & $Target --config $Config service install
}
Step "$Target --config $Config diagnose" {
  & $Target --config $Config diagnose
}
if (-not $DryRun) {
  Write-Output "Mini Connector is installed and running as the service MiniConnector."
  Write-Output "Status: & '$Target' --config '$Config' status"
}
