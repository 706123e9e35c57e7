// One MongoDB user per crm-stream service, each with a role of its own that reaches its own
// collections only (and reads what it must of a shared store: the key vault). Run it as a
// user administrator once per cluster, and again after an upgrade that adds collections:
//
//   CRM_MONGO_PASSWORD_INGEST=... CRM_MONGO_PASSWORD_PROFILES=... (one per user) \
//   mongosh "mongodb://admin@mongodb-0.example.internal:27017/admin?tls=true&replicaSet=rs0" \
//     --file deploy/mongodb/create-users.js
//
// Idempotent: an existing role is updated to the lists below, an existing user gets the
// password from the environment (this is also how a password is rotated); a user whose
// CRM_MONGO_PASSWORD_<NAME> is unset is left as it is. Users live in the database `crm`
// (CRM_MONGO_DATABASE), so the services' URLs say authSource=crm.
// `ops` reads every collection, writes none: `crm export-customer`, `crm report`, `crm trace`.

const DATABASE = process.env.CRM_MONGO_DATABASE || "crm";

// BEGIN ACCESS (JSON; tests/deploy/test_least_privilege.py checks it against the code)
const ACCESS = {
  "actions": {
    "readWrite": [
      "find",
      "insert",
      "update",
      "remove",
      "createIndex",
      "dropIndex",
      "listIndexes",
      "createCollection",
      "dropCollection",
      "collStats"
    ],
    "read": [
      "find",
      "listIndexes",
      "createIndex"
    ],
    "database": [
      "listCollections"
    ]
  },
  "users": {
    "ingest": {
      "readWrite": [
        "ingest_cards",
        "ingest_seen",
        "vault_erasures",
        "vault_keys"
      ],
      "read": []
    },
    "profiles": {
      "readWrite": [
        "audit",
        "profiles",
        "profiles_coupons",
        "profiles_meta",
        "profiles_segment_definitions",
        "profiles_segment_members",
        "profiles_timeline"
      ],
      "read": [
        "vault_erasures",
        "vault_keys"
      ]
    },
    "offers": {
      "readWrite": [
        "audit",
        "offers",
        "offers_budgets",
        "offers_campaigns",
        "offers_cards",
        "offers_days",
        "offers_erasures",
        "offers_ledgers",
        "offers_reservations"
      ],
      "read": []
    },
    "notifier": {
      "readWrite": [
        "notifier_contacts",
        "notifier_deliveries",
        "notifier_send_budget"
      ],
      "read": [
        "vault_erasures",
        "vault_keys"
      ]
    },
    "reports": {
      "readWrite": [
        "reports_facts"
      ],
      "read": []
    },
    "ops": {
      "readWrite": [],
      "read": [
        "audit",
        "ingest_cards",
        "ingest_seen",
        "notifier_contacts",
        "notifier_deliveries",
        "notifier_send_budget",
        "offers",
        "offers_budgets",
        "offers_campaigns",
        "offers_cards",
        "offers_days",
        "offers_erasures",
        "offers_ledgers",
        "offers_reservations",
        "profiles",
        "profiles_coupons",
        "profiles_meta",
        "profiles_segment_definitions",
        "profiles_segment_members",
        "profiles_timeline",
        "reports_facts",
        "vault_erasures",
        "vault_keys"
      ]
    }
  }
};
// END ACCESS

function privileges(access) {
  const on = (collection, actions) => ({ resource: { db: DATABASE, collection }, actions });
  return [
    ...access.readWrite.map((c) => on(c, ACCESS.actions.readWrite)),
    // Readers may create the indexes they expect: the storage kit ensures them on opening.
    ...access.read.map((c) => on(c, ACCESS.actions.read)),
    // Collection names only (`crm replay` finds its own collections to drop): no data.
    on("", ACCESS.actions.database),
  ];
}

const target = db.getSiblingDB(DATABASE);
for (const [service, access] of Object.entries(ACCESS.users)) {
  const name = `crm-${service}`;
  const role = { privileges: privileges(access), roles: [] };
  if (target.getRole(name)) {
    target.updateRole(name, role);
  } else {
    target.createRole({ role: name, ...role });
  }
  const variable = `CRM_MONGO_PASSWORD_${service.toUpperCase()}`;
  const pwd = process.env[variable];
  if (!pwd) {
    print(`${name}: role up to date; user unchanged (${variable} is not set)`);
    continue;
  }
  const roles = [{ role: name, db: DATABASE }];
  if (target.getUser(name)) {
    target.updateUser(name, { pwd, roles });
  } else {
    target.createUser({ user: name, pwd, roles });
  }
  print(`${name}: role and user up to date`);
}
