// The customer's journey on the customer page: the timeline (profiles' GET
// /api/customers/{id}/timeline) with filters by type, times in the store's local time, the
// agent's notes (POST .../notes), the consent history and the favourite categories.
// Uses app.js's api, el and table.
"use strict";

(function () {
  // The filters: a group of entry types each.
  const GROUPS = [
    ["purchases", "Purchases", ["purchase"]],
    ["consent", "Sign-up and consent", ["signup", "consent", "update", "card_linked"]],
    ["interactions", "Interactions", ["interaction"]],
    ["offers", "Coupons", ["offer_issued", "offer_redeemed", "offer_expired", "offer_revoked"]],
    ["emails", "E-mails", ["email"]],
    ["notes", "Notes", ["note"]],
  ];
  const PAGE = 25;
  const LABELS = {
    signup: "Signed up", update: "Details changed", consent: "Consent", card_linked: "Card linked",
    purchase: "Purchase", interaction: "Interaction", offer_issued: "Coupon issued",
    offer_redeemed: "Coupon redeemed", offer_expired: "Coupon expired", offer_revoked: "Coupon revoked",
    email: "E-mail", note: "Note",
  };

  // "2026-03-01T11:00:00+01:00" as "2026-03-01 11:00" (the store's wall clock).
  function wallClock(at) {
    return at.slice(0, 16).replace("T", " ");
  }

  // A look-up time in the store's time zone when the API gives it, else in UTC, said so.
  function local(row) {
    return row.local_at ? wallClock(row.local_at) : wallClock(row.at) + " UTC";
  }

  function consentText(d) {
    if (d.marketing_consent === undefined) return "";
    const how = [d.source && `via ${d.source}`, d.channel && `for ${d.channel}`, d.consent_text_version && `wording ${d.consent_text_version}`].filter(Boolean);
    return (d.marketing_consent ? "marketing consent given" : "marketing consent withdrawn") + (how.length ? " (" + how.join(", ") + ")" : "");
  }

  // What an entry says, in a line.
  function summary(e) {
    const d = e.details;
    const at = e.store_id ? ` at ${e.store_id}` : "";
    switch (e.type) {
      case "signup": return `Card registered${at}; ` + consentText(d);
      case "update": return [d.changed && `changed: ${d.changed}`, consentText(d)].filter(Boolean).join("; ") || "details changed";
      case "consent": return consentText(d);
      case "card_linked": return "another card linked to this customer";
      case "purchase": return `${d.total} ${d.currency || ""}${at}, ${d.lines} line${d.lines === 1 ? "" : "s"}` + (d.coupons ? `, ${d.coupons} coupon(s)` : "");
      case "interaction": {
        const shown = Object.entries(d).filter(([k]) => k.startsWith("detail_")).map(([k, v]) => `${k.slice(7)}: ${v}`);
        return `${d.interaction_type} via ${d.channel}` + (shown.length ? " · " + shown.join(", ") : "");
      }
      case "offer_issued": return `${d.coupon_code}: ${d.discount_percent} % on ${d.product_name || d.sku || d.category || "the basket"}, valid until ${d.valid_until}`;
      case "offer_redeemed": return `${d.coupon_code}${at}` + (d.discount ? `: ${d.discount} off a basket of ${d.basket_total}` : "");
      case "offer_expired": return `${d.coupon_code}: unused by ${d.valid_until}`;
      case "offer_revoked": return `${d.coupon_code}: ${d.reason || "revoked"}`;
      case "email": return `coupon e-mail ${d.state}` + (d.reason ? ` (${d.reason})` : "") + (d.attempts > 1 ? `, ${d.attempts} attempts` : "");
      case "note": return d.text === undefined ? "(unreadable)" : d.text;
      default: return "";
    }
  }

  function item(e) {
    const time = el("time", { datetime: e.at, title: `${e.at} UTC` }, wallClock(e.local_at));
    return el("li", { class: `entry entry-${e.type}`, "data-type": e.type },
      time, el("span", { class: "zone" }, e.zone),
      el("b", {}, LABELS[e.type] || e.type),
      el("span", { class: "what" }, summary(e)),
      e.type === "note" && e.details.author ? el("span", { class: "muted" }, `by ${e.details.author}`) : "");
  }

  function consentHistory(c) {
    const rows = (c.consent_history || []).map((r) => ({
      at: local(r), given: r.given ? "given" : "withdrawn",
      source: r.source || "-", channel: r.channel || "-", wording: r.text_version || "-",
    }));
    if (!rows.length) return [el("p", { class: "muted" }, "No consent statement on record.")];
    return [el("div", { class: "table-wrap" }, table(["at", "given", "source", "channel", "wording"], rows, "Marketing consent, newest first"))];
  }

  function interactions(c) {
    const rows = (c.latest_interactions || []).map((i) => ({
      at: local(i), type: i.type, channel: i.channel,
      details: Object.entries(i.details || {}).map(([k, v]) => `${k}: ${v}`).join(", "),
    }));
    return el("div", { class: "table-wrap", id: "customer-interactions" }, table(["at", "type", "channel", "details"], rows, "Support tickets, social likes, e-mail opens and clicks, with their details"));
  }

  // The panel: favourite categories, interactions with their details, consent history, the
  // note form and the timeline.
  function panel(c) {
    const list = el("ol", { id: "timeline-list", class: "timeline", "aria-live": "polite" });
    const status = el("p", { id: "timeline-status", role: "status" });
    const more = el("button", { type: "button", id: "timeline-more", class: "secondary", hidden: "" }, "Older entries");
    const filters = el("fieldset", { id: "timeline-filters", class: "filters" }, el("legend", {}, "Show"),
      ...GROUPS.map(([id, label]) => el("label", {}, el("input", { type: "checkbox", name: "timeline-type", value: id, checked: "" }), " " + label)));
    const text = el("textarea", { id: "note-text", name: "text", rows: "3", maxlength: "2000", required: "" });
    const noteStatus = el("p", { id: "note-status", role: "status" });
    const form = el("form", { id: "note-form", class: "stacked" },
      el("label", { for: "note-text" }, "Add a note"), text,
      el("div", { class: "actions" }, el("button", { type: "submit" }, "Add note")), noteStatus);
    let next = null;

    function types() {
      const checked = [...filters.querySelectorAll("input:checked")].map((i) => i.value);
      if (checked.length === GROUPS.length) return [];
      return GROUPS.filter(([id]) => checked.includes(id)).flatMap(([, , t]) => t);
    }

    async function load(reset) {
      const chosen = types();
      if (reset) { list.replaceChildren(); next = null; }
      if (!filters.querySelector("input:checked")) { status.textContent = "No type chosen."; more.hidden = true; return; }
      const query = new URLSearchParams({ limit: String(PAGE) });
      for (const t of chosen) query.append("type", t);
      if (next) query.set("before", next);
      status.textContent = "Loading…";
      const response = await api(`/api/customers/${encodeURIComponent(c.customer_id)}/timeline?${query}`);
      if (!response.ok) {
        status.textContent = response.status === 403 ? "Not allowed for this role." : "Timeline not available (" + response.status + ")";
        return;
      }
      const page = await response.json();
      list.append(...page.entries.map(item));
      next = page.next;
      more.hidden = !next;
      status.textContent = list.children.length ? "" : "Nothing of these types yet.";
    }

    filters.addEventListener("change", () => load(true));
    more.addEventListener("click", () => load(false));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await api(`/api/customers/${encodeURIComponent(c.customer_id)}/notes`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: text.value }),
      });
      if (response.status !== 202) {
        noteStatus.textContent = response.status === 403 ? "Not allowed for this role." : "The note was not added (" + response.status + ").";
        return;
      }
      text.value = "";
      noteStatus.textContent = "Note added: it shows in the timeline once recorded.";
      await load(true);
    });
    load(true);

    const favourites = (c.favourite_categories || []).length
      ? table(["key", "checkouts", "spend"], c.favourite_categories, "Categories by checkouts, then spend")
      : el("p", { class: "muted" }, "No purchases yet.");
    return [
      el("h4", {}, "Favourite categories"), el("div", { class: "table-wrap", id: "customer-categories" }, favourites),
      el("h4", {}, "Latest interactions"), interactions(c),
      el("h4", {}, "Consent history"), el("div", { id: "consent-history" }, ...consentHistory(c)),
      el("section", { id: "customer-journey", "aria-labelledby": "journey-title" },
        el("h4", { id: "journey-title" }, "Journey (in the store's local time)"),
        form, filters, status, list, more),
    ];
  }

  window.crmJourney = { panel };
})();
