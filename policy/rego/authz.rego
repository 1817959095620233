# The shipped decision module: typed policies, just-in-time access, organisation controls and the
# custom Rego policies' `deny`/`allow` sets decide every request, with a human-readable reason for
# each policy that contributed.
#
# The typed policies are compiled to Rego data by policy/_compile.py. The service passes the part
# of it that can bear on the request in `input.scope`, because on the embedded engine a lookup by
# a computed key costs time linear in the size of the document looked in: for a decision, the
# policies of the verb's kind (and recording policies) that cover the target and apply to the
# principal; for an explanation, every policy that covers the target or applies to the principal;
# and the principal's just-in-time access. Each policy's sets are cut down to the members this
# request could look up, which leaves every membership test below with the same answer. Only
# typed policies, which can allow but never deny, are ever left out, so the scope cannot turn a
# denial into an allow; this module still checks every condition itself. Organisation-wide
# settings are in `data.mrzap_data`; custom policies are modules in `mrzap.custom.*`, gathered
# by the generated `mrzap.customs`.
#
# It runs unchanged on the embedded engine (rego-cpp) and on OPA, so it keeps to the builtins both
# implement alike: no time or net functions (the service puts `now` and ages in the input as
# numbers, and preformatted times and durations beside them for messages), and no min, max or sort
# on numbers (rego-cpp orders numbers of different lengths as text).
package mrzap.authz

import rego.v1

explaining if input.context.explain == true

# How messages name the principal, the action and the target; the service formats them once
# (formatting text costs the embedded engine more than anything else in a decision).
who := input.context.who

what := input.context.what

target_words := input.context.where

# --- API calls: the servicers classify every RPC; custom Rego may only add denials. ---

open_access := {"public", "login", "refresh", "agent"}

api_allows contains r if {
	input.api_call.access in open_access
	r := builtin("allow", sprintf("%s is open to %s callers", [input.api_call.method, input.api_call.access]))
}

api_allows contains r if {
	input.api_call.access == "user"
	authenticated
	r := builtin("allow", sprintf("%s may call %s", [who, input.api_call.method]))
}

api_allows contains r if {
	input.api_call.access == "admin"
	authenticated
	input.principal.admin == true
	r := builtin("allow", sprintf("%s is an administrator and may call %s", [who, input.api_call.method]))
}

api_denies contains r if {
	input.api_call.access == "admin"
	not input.principal.admin == true
	r := builtin("deny", sprintf("only administrators may call %s", [input.api_call.method]))
}

api_denies contains r if {
	input.api_call.access in {"user", "admin"}
	not authenticated
	r := builtin("deny", sprintf("%s needs a signed-in user or an API key", [input.api_call.method]))
}

known_access := {"public", "login", "refresh", "agent", "user", "admin"}

api_denies contains r if {
	input.api_call
	not input.api_call.access in known_access
	r := builtin("deny", sprintf("%s has no access class, so nobody may call it", [input.api_call.method]))
}

authenticated if input.principal.user_id != ""

authenticated if input.principal.api_key_id != ""

# --- Target access: the typed policies that cover the target, found through the indexes. ---

kind_of_verb := {
	"VERB_SHELL": "target_connect",
	"VERB_EXEC": "target_connect",
	"VERB_FILE_TRANSFER": "target_connect",
	"VERB_TUNNEL": "proxy",
	"VERB_KUBE": "kubernetes",
}

kind_names := {
	"target_connect": "target connect",
	"kubernetes": "Kubernetes",
	"proxy": "proxy",
	"session_recording": "session recording",
}

verb_names := {
	"VERB_SHELL": "a shell",
	"VERB_EXEC": "commands",
	"VERB_FILE_TRANSFER": "file transfers",
	"VERB_TUNNEL": "tunnels",
	"VERB_KUBE": "Kubernetes access",
}

covers(p) if p.targets.ids[input.target_access.target_id]

covers(p) if p.targets.environments[input.target_access.environment_id]

# Takes the policy, not `p.subjects`: the scope leaves out empty sets, and OPA (unlike rego-cpp)
# makes `not f(x.missing)` undefined rather than true, so arguments must always be defined.
subject_matches(p) if p.subjects.emails[input.principal.subject.email]

subject_matches(p) if {
	some group in input.principal.groups
	p.subjects.groups[group]
}

subject_matches(p) if {
	input.principal.api_key_id != ""
	p.subjects.api_keys[input.principal.api_key_id]
}

# Approved, unexpired just-in-time requests of the principal, by the policy whose access they
# give (the compiler keeps the latest-ending request per policy, so each key has one value).
jit_grants[policy_id] := grant if {
	input.principal.user_id != ""
	some policy_id, grant in object.get(input.scope, "jit_access", {})
	grant.expires_at > input.context.now
}

applies(p) if subject_matches(p)

applies(p) if jit_grants[p.id]

user_allowed(p) if p.target_users[input.target_access.target_user]

user_allowed(p) if {
	p.kind == "proxy"
	input.target_access.target_user == ""
	object.get(p, "target_user_count", 0) == 0
}

destination_allowed(p) if p.destinations[input.context.destination]

groups_allowed(p) if {
	every group in object.get(input.target_access, "kube_groups", []) {
		p.cluster_groups[group]
	}
}


# One verdict per considered access policy: the first check that fails, or allow.
verdict(p) := na(p, sprintf("is a %s policy; this is a request for %s", [kind_names[p.kind], verb_names[input.target_access.verb]])) if {
	p.kind != kind_of_verb[input.target_access.verb]
} else := na(p, sprintf("does not cover %s or its environment", [target_words])) if {
	not covers(p)
} else := na(p, sprintf("does not apply to %s", [who])) if {
	not applies(p)
} else := na(p, sprintf("does not allow %s", [verb_names[input.target_access.verb]])) if {
	p.kind == "target_connect"
	not p.verbs[input.target_access.verb]
} else := na(p, sprintf("does not allow acting as \"%s\"", [input.target_access.target_user])) if {
	p.kind == "kubernetes"
	not p.cluster_users[input.target_access.target_user]
} else := na(p, "does not allow the Kubernetes groups asked for") if {
	p.kind == "kubernetes"
	not groups_allowed(p)
} else := na(p, sprintf("does not allow %s as a destination", [object.get(input.context, "destination", "no destination")])) if {
	p.kind == "proxy"
	not destination_allowed(p)
} else := na(p, sprintf("does not allow acting as \"%s\"", [input.target_access.target_user])) if {
	p.kind in {"target_connect", "proxy"}
	not user_allowed(p)
} else := allowed_by(p)

allowed_by(p) := {"policy_id": p.id, "policy_name": p.name, "effect": "allow", "message": sprintf(
	"allows %s on %s through just-in-time request %s, until %s",
	[what, target_words, jit_grants[p.id].request_id, jit_grants[p.id].until],
)} if {
	not subject_matches(p)
} else := {"policy_id": p.id, "policy_name": p.name, "effect": "allow", "message": sprintf("allows %s on %s", [what, target_words])}

na(p, message) := {"policy_id": p.id, "policy_name": p.name, "effect": "not_applicable", "message": message}

access_reasons := [verdict(p) |
	some p in input.scope.policies
	p.kind != "session_recording"
]

# --- Session recording: output always; input when a matching policy says so. ---

recording_reasons := [recording_verdict(p) |
	some p in input.scope.policies
	p.kind == "session_recording"
]

recording_verdict(p) := na(p, sprintf("does not cover %s or its environment", [target_words])) if {
	not covers(p)
} else := na(p, sprintf("does not apply to %s", [who])) if {
	not subject_matches(p)
} else := object.union(na(p, "records what the user types as well as the output"), {"record_input": true, "applies": true}) if {
	p.record_input == true
} else := object.union(na(p, "records the output"), {"applies": true})

# --- Organisation controls: MFA recency and the longest session. ---

mfa_denies contains r if {
	input.target_access
	data.mrzap_data.org.mfa_required == true
	input.principal.api_key_id == ""
	not input.context.mfa_verified == true
	r := org_reason("deny", "MFA is required, and this session has not passed it")
}

mfa_denies contains r if {
	input.target_access
	data.mrzap_data.org.mfa_required == true
	input.principal.api_key_id == ""
	input.context.mfa_verified == true
	data.mrzap_data.org.mfa_window > 0
	input.context.mfa_age > data.mrzap_data.org.mfa_window
	r := org_reason("deny", sprintf("MFA is required within %s, and the last one was %s ago", [data.mrzap_data.org.mfa_window_text, input.context.mfa_age_text]))
}

org_notes contains r if {
	input.target_access
	data.mrzap_data.org.mfa_required == true
	input.principal.api_key_id != ""
	r := org_reason("not_applicable", "API keys are not asked for MFA")
}

org_notes contains r if {
	input.target_access
	data.mrzap_data.org.max_session_ttl > 0
	r := org_reason("not_applicable", sprintf("no connection may last longer than %s", [data.mrzap_data.org.max_session_ttl_text]))
}

org_reason(effect, message) := {"policy_id": data.mrzap_data.org.id, "policy_name": data.mrzap_data.org.name, "effect": effect, "message": message}

durations_of(allowing) := {d |
	some policy_id in allowing
	d := duration_of(object.get(input.scope.policies[policy_id], "max_session_duration", 0))
}

duration_of(d) := d if d > 0 else := data.mrzap_data.default_session_duration

# The longest duration any allowing policy gives, capped by the organisation.
session_duration(allowing) := capped(longest(durations_of(allowing)))

longest(durations) := d if {
	some d in durations
	every other in durations {
		other <= d
	}
} else := 0

capped(d) := data.mrzap_data.org.max_session_ttl if {
	data.mrzap_data.org.max_session_ttl > 0
	d > data.mrzap_data.org.max_session_ttl
} else := d

# --- Just-in-time policies and requests, in explanations. ---

jit_notes contains r if {
	explaining
	some j in input.scope.jit_policies
	subject_matches(j)
	r := na(j, "gives the access of its policies for a while to requests an approver allows; you may ask")
}

jit_notes contains r if {
	explaining
	input.principal.user_id != ""
	some grant in object.get(input.scope, "jit_access", {})
	grant.expires_at <= input.context.now
	r := builtin("not_applicable", sprintf("just-in-time request %s ended at %s", [grant.request_id, grant.until]))
}

jit_notes contains r if {
	explaining
	input.target_access
	input.scope.others > 0
	r := builtin("not_applicable", sprintf("%d other policies neither cover %s nor apply to %s", [input.scope.others, target_words, who]))
}

# --- Custom Rego: every policy's `deny` denies anything; its `allow` allows target access. ---

custom_denies contains object.union(c, {"effect": "deny"}) if some c in data.mrzap.customs.deny

custom_notes contains r if {
	explaining
	some c in data.mrzap.customs.silent
	r := object.union(c, {"effect": "not_applicable", "message": "custom Rego: neither denies nor allows this request"})
}

custom_allows contains r if {
	input.target_access
	some c in data.mrzap.customs.allow
	r := object.union(c, {"effect": "allow"})
}

# --- The decision. ---

builtin(effect, message) := {"policy_id": "", "policy_name": "", "effect": effect, "message": message}

# Each part is computed once here and handed on, because the embedded engine does not cache
# rule values within an evaluation; reasons are arrays, cheaper than sets there.
decision := result if {
	typed := access_reasons
	recordings := recording_reasons
	allowing := [r.policy_id | some r in typed; r.effect == "allow"]
	allows := array.concat(
		array.concat([r | some r in api_allows], [r | some r in custom_allows]),
		[r | some r in typed; r.effect == "allow"],
	)
	denies := array.concat(
		array.concat([r | some r in api_denies], [r | some r in custom_denies]),
		array.concat([r | some r in mfa_denies], missing_allow(allows)),
	)
	allowed := is_allowed(allows, denies)
	recorded := [r | some r in recordings; r.applies == true]
	result := {
		"allowed": allowed,
		"reasons": array.concat(array.concat(allows, denies), array.concat(recorded, notes(allowed, typed))),
		"policy_ids": allowing,
		"max_session_duration": session_duration(allowing),
		"record_input": record_input(recordings),
	}
}

# Denied unless some policy allows the request and none denies it.
is_allowed(allows, denies) if {
	count(allows) > 0
	count(denies) == 0
} else := false

missing_allow(allows) := [builtin("deny", message)] if {
	input.target_access
	count(allows) == 0
	message := sprintf("no policy allows %s on %s", [what, target_words])
} else := []

# A decision names what decided it; a denial and an explanation also say what did not apply.
notes(allowed, typed) := [] if {
	allowed
	not explaining
} else := array.concat(
	array.concat([r | some r in typed; r.effect == "not_applicable"], [r | some r in recording_reasons; not r.applies]),
	array.concat([r | some r in org_notes], array.concat([r | some r in jit_notes], [r | some r in custom_notes])),
)

record_input(recordings) if {
	some v in recordings
	v.record_input == true
} else := false
