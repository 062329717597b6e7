//! Wire → domain conversions.
//!
//! Structural only: which oneof member, empty proto strings → `None`, `ttl_seconds == 0` →
//! `None`. Every semantic rule lives in `ferry_model::validate` so the JSON API shares it. The
//! conversion fails only when the shape itself is unusable: no `content` (1008 on `type`) or a
//! `flow_action_payload.data_json` that is not JSON (1009).
//!
//! `SendRequest.idempotency_key` and `SendRequest.sender` are not part of the message; the ingest
//! layer reads them from the request.

use std::collections::{BTreeMap, HashMap};

use ferry_model::message as m;
use ferry_model::{ApiError, ErrorCode};

use crate::v1;
use crate::v1::send_request::Content as Wire;

/// Empty string → `None` (proto3 has no presence for scalar strings).
fn opt(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

fn map(values: HashMap<String, String>) -> BTreeMap<String, String> {
    values.into_iter().collect()
}

impl TryFrom<v1::SendRequest> for m::OutboundMessage {
    type Error = ApiError;

    fn try_from(r: v1::SendRequest) -> Result<Self, ApiError> {
        let Some(content) = r.content else {
            return Err(ApiError::new(
                ErrorCode::MissingParameter,
                "type",
                "the message has no content: expected one of text, image, audio, video, document, \
                 sticker, contacts, location, template, interactive, reaction or address",
            ));
        };
        let content = match content {
            Wire::Text(t) => {
                m::Content::Text(m::TextMessage { body: opt(t.body), preview_url: t.preview_url.then_some(true) })
            }
            Wire::Image(x) => m::Content::Image(media(x)),
            Wire::Audio(x) => m::Content::Audio(media(x)),
            Wire::Video(x) => m::Content::Video(media(x)),
            Wire::Document(x) => m::Content::Document(media(x)),
            Wire::Sticker(x) => m::Content::Sticker(media(x)),
            Wire::Contacts(c) => m::Content::Contacts(c.contacts.into_iter().map(contact).collect()),
            Wire::Location(l) => m::Content::Location(location(l)),
            Wire::Template(t) => m::Content::Template(template(t)),
            Wire::Interactive(i) => m::Content::Interactive(interactive(i)?),
            Wire::Reaction(x) => m::Content::Reaction(m::ReactionMessage {
                message_id: opt(x.message_id),
                // An empty emoji is meaningful: it removes a reaction.
                emoji: Some(x.emoji),
            }),
            Wire::Address(a) => m::Content::Address(m::AddressMessage {
                body: opt(a.body),
                country: opt(a.country),
                values: map(a.values),
                saved_addresses: a
                    .saved_addresses
                    .into_iter()
                    .map(|s| m::SavedAddress { id: opt(s.id), value: map(s.value) })
                    .collect(),
                validation_errors: map(a.validation_errors),
            }),
        };
        Ok(m::OutboundMessage {
            to: r.to,
            recipient_type: opt(r.recipient_type),
            content,
            context: r.context.map(|c| m::Context { message_id: opt(c.message_id) }),
            biz_opaque_callback_data: opt(r.biz_opaque_callback_data),
            ttl_seconds: (r.ttl_seconds != 0).then_some(r.ttl_seconds),
        })
    }
}

fn media(x: v1::MediaMessage) -> m::MediaMessage {
    m::MediaMessage {
        id: opt(x.id),
        link: opt(x.link),
        caption: opt(x.caption),
        filename: opt(x.filename),
        provider: x.provider.map(|p| m::MediaProvider { name: opt(p.name) }),
    }
}

fn contact(c: v1::Contact) -> m::Contact {
    m::Contact {
        addresses: c
            .addresses
            .into_iter()
            .map(|a| m::ContactAddress {
                street: opt(a.street),
                city: opt(a.city),
                state: opt(a.state),
                zip: opt(a.zip),
                country: opt(a.country),
                country_code: opt(a.country_code),
                kind: opt(a.r#type),
            })
            .collect(),
        birthday: opt(c.birthday),
        emails: c.emails.into_iter().map(|e| m::ContactEmail { email: opt(e.email), kind: opt(e.r#type) }).collect(),
        name: c.name.map(|n| m::ContactName {
            formatted_name: opt(n.formatted_name),
            first_name: opt(n.first_name),
            last_name: opt(n.last_name),
            middle_name: opt(n.middle_name),
            suffix: opt(n.suffix),
            prefix: opt(n.prefix),
        }),
        org: c.org.map(|o| m::ContactOrg {
            company: opt(o.company),
            department: opt(o.department),
            title: opt(o.title),
        }),
        phones: c
            .phones
            .into_iter()
            .map(|p| m::ContactPhone { phone: opt(p.phone), kind: opt(p.r#type), wa_id: opt(p.wa_id) })
            .collect(),
        urls: c.urls.into_iter().map(|u| m::ContactUrl { url: opt(u.url), kind: opt(u.r#type) }).collect(),
    }
}

fn location(l: v1::LocationMessage) -> m::LocationMessage {
    m::LocationMessage { latitude: l.latitude, longitude: l.longitude, name: opt(l.name), address: opt(l.address) }
}

fn template(t: v1::TemplateMessage) -> m::TemplateMessage {
    m::TemplateMessage {
        namespace: opt(t.namespace),
        category: opt(t.category),
        name: opt(t.name),
        language: t.language.map(|l| m::TemplateLanguage { policy: opt(l.policy), code: opt(l.code) }),
        components: t
            .components
            .into_iter()
            .map(|c| m::TemplateComponent {
                kind: opt(c.r#type),
                sub_type: opt(c.sub_type),
                index: c.index.map(|i| m::ButtonIndex::Number(i64::from(i))),
                parameters: c.parameters.into_iter().map(template_parameter).collect(),
            })
            .collect(),
    }
}

fn template_parameter(p: v1::TemplateParameter) -> m::TemplateParameter {
    m::TemplateParameter {
        kind: opt(p.r#type),
        text: opt(p.text),
        currency: p.currency.map(|c| m::TemplateCurrency {
            fallback_value: opt(c.fallback_value),
            code: opt(c.code),
            amount_1000: c.amount_1000,
        }),
        date_time: p.date_time.map(|d| m::TemplateDateTime { fallback_value: opt(d.fallback_value) }),
        image: p.image.map(media),
        document: p.document.map(media),
        video: p.video.map(media),
        location: p.location.map(location),
        payload: opt(p.payload),
        coupon_code: opt(p.coupon_code),
    }
}

fn interactive_text(t: v1::InteractiveText) -> m::InteractiveText {
    m::InteractiveText { text: opt(t.text) }
}

fn interactive(i: v1::InteractiveMessage) -> Result<m::InteractiveMessage, ApiError> {
    Ok(m::InteractiveMessage {
        kind: opt(i.r#type),
        header: i.header.map(|h| m::InteractiveHeader {
            kind: opt(h.r#type),
            text: opt(h.text),
            image: h.image.map(media),
            video: h.video.map(media),
            document: h.document.map(media),
        }),
        body: i.body.map(interactive_text),
        footer: i.footer.map(interactive_text),
        action: i.action.map(action).transpose()?,
    })
}

fn action(a: v1::InteractiveAction) -> Result<m::InteractiveAction, ApiError> {
    Ok(m::InteractiveAction {
        buttons: a
            .buttons
            .into_iter()
            .map(|b| m::InteractiveButton {
                kind: opt(b.r#type),
                reply: b.reply.map(|r| m::InteractiveReply { id: opt(r.id), title: opt(r.title) }),
            })
            .collect(),
        button: opt(a.button),
        sections: a
            .sections
            .into_iter()
            .map(|s| m::InteractiveSection {
                title: opt(s.title),
                rows: s
                    .rows
                    .into_iter()
                    .map(|r| m::InteractiveRow { id: opt(r.id), title: opt(r.title), description: opt(r.description) })
                    .collect(),
                product_items: s
                    .product_items
                    .into_iter()
                    .map(|p| m::InteractiveProductItem { product_retailer_id: opt(p.product_retailer_id) })
                    .collect(),
            })
            .collect(),
        catalog_id: opt(a.catalog_id),
        product_retailer_id: opt(a.product_retailer_id),
        name: opt(a.name),
        parameters: a.parameters.map(action_parameters).transpose()?,
    })
}

fn action_parameters(p: v1::InteractiveActionParameters) -> Result<m::InteractiveActionParameters, ApiError> {
    let flow_action_payload = match p.flow_action_payload {
        None => None,
        Some(f) => {
            let data = if f.data_json.trim().is_empty() {
                None
            } else {
                let v = m::parse_json_value(&f.data_json).map_err(|e| {
                    ApiError::invalid(
                        "interactive.action.parameters.flow_action_payload.data_json",
                        format!("a json object, got text that does not parse ({e})"),
                    )
                })?;
                Some(v)
            };
            Some(m::FlowActionPayload { screen: opt(f.screen), data })
        }
    };
    Ok(m::InteractiveActionParameters {
        mode: opt(p.mode),
        flow_message_version: opt(p.flow_message_version),
        flow_token: opt(p.flow_token),
        flow_id: opt(p.flow_id),
        flow_cta: opt(p.flow_cta),
        flow_action: opt(p.flow_action),
        flow_action_payload,
        display_text: opt(p.display_text),
        url: opt(p.url),
        thumbnail_product_retailer_id: opt(p.thumbnail_product_retailer_id),
    })
}

impl From<&ApiError> for v1::Error {
    fn from(e: &ApiError) -> Self {
        v1::Error {
            code: e.code.code(),
            title: e.code.title().to_owned(),
            field: e.field.clone(),
            details: e.details.clone(),
        }
    }
}
