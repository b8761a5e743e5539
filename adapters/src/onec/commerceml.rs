//! CommerceML 2 exchange files: `import.xml` (groups, products) and
//! `offers.xml` (price types, offers with prices and variants `a#b`), read as
//! streams.

use std::collections::HashMap;
use std::io::BufRead;

use super::{Field, Node, Parsed, ProductRecord, SourceError, Xml, flag, non_empty, parse_decimal};

/// The price type used when none is configured (else the first one listed).
pub const DEFAULT_PRICE_TYPE: &str = "Розница";

/// What `import.xml` and `offers.xml` describe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// `(guid, name, parent guid)` per `Группа`, parents before children.
    pub folders: Vec<(String, String, Option<String>)>,
    /// Products in `import.xml` order, each variant right after its product,
    /// then rejected offers of unknown products.
    pub products: Vec<Parsed<ProductRecord>>,
}

/// Reads `import` and, if given, joins `offers` to it: a plain offer `a`
/// sets the price (and barcode) of product `a`; an offer `a#b` is a variant
/// `b` of `a`. The price is that of the type named `price_type`, else
/// [`DEFAULT_PRICE_TYPE`], else the first type listed. The whole catalogue
/// in memory: [`stream`] reads it record by record.
pub fn parse<R1: BufRead, R2: BufRead>(
    import: R1,
    offers: Option<R2>,
    price_type: Option<&str>,
) -> Result<Catalog, SourceError> {
    let mut catalog = Catalog::default();
    stream(import, offers, price_type, |item| {
        match item {
            Item::Folder(folder) => catalog.folders.push(folder),
            Item::Product(product) => catalog.products.push(product),
        }
        Ok(())
    })?;
    Ok(catalog)
}

/// One thing [`stream`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `(guid, name, parent guid)` of a `Группа`, parents before children.
    Folder((String, String, Option<String>)),
    Product(Parsed<ProductRecord>),
}

/// What [`parse`] answers, one item at a time and in the same order, with
/// memory that does not grow with `import.xml`: folders as their
/// `Группы` ends, then each product as it is read, its variants right
/// after it, and finally the offers of unknown products. `offers.xml` is
/// indexed in memory first (an offer is its id, name, barcode and prices).
/// `emit` may stop the reading by answering an error.
pub fn stream<R1: BufRead, R2: BufRead>(
    import: R1,
    offers: Option<R2>,
    price_type: Option<&str>,
    mut emit: impl FnMut(Item) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let mut joiner = match offers {
        Some(offers) => {
            let mut offer_types = Vec::new();
            let offers = read_offers(offers, &mut offer_types)?;
            Some(Joiner::new(offers, offer_types))
        }
        None => None,
    };
    let mut import_types = Vec::new();
    let mut count = 0usize;
    document(import, |x, name| match name {
        "Классификатор" => x.children(|x, name| match name {
            "Группы" => {
                let mut folders = Vec::new();
                read_groups(x, &mut folders)?;
                folders
                    .into_iter()
                    .try_for_each(|folder| emit(Item::Folder(folder)))
            }
            "ТипыЦен" => read_price_types(x, &mut import_types),
            _ => Ok(()),
        }),
        "Каталог" => x.children(|x, name| match name {
            "Товары" => x.children(|x, name| {
                if name != "Товар" {
                    return Ok(());
                }
                count += 1;
                let product = read_product(x, count)?;
                match &mut joiner {
                    None => emit(Item::Product(product)),
                    Some(joiner) => joiner
                        .join(product, &import_types, price_type)?
                        .into_iter()
                        .try_for_each(|record| emit(Item::Product(record))),
                }
            }),
            _ => Ok(()),
        }),
        _ => Ok(()),
    })?;
    if let Some(mut joiner) = joiner {
        joiner.retail(&import_types, price_type)?;
        joiner
            .unknown()
            .into_iter()
            .try_for_each(|record| emit(Item::Product(record)))?;
    }
    Ok(())
}

/// Joins each product of `import.xml`, as it is read, with its offers.
struct Joiner {
    /// Offers by the product they are about, each with its place in
    /// `offers.xml`.
    offers: HashMap<String, Vec<(usize, Offer)>>,
    offer_types: Vec<(String, String)>,
    /// The retail price type's `Ид` once decided (at the first product:
    /// `import.xml` lists its types before its products).
    retail: Option<Option<String>>,
}

impl Joiner {
    fn new(offers: Vec<Offer>, offer_types: Vec<(String, String)>) -> Self {
        let mut index: HashMap<String, Vec<(usize, Offer)>> = HashMap::new();
        for (at, offer) in offers.into_iter().enumerate() {
            let product = offer
                .id
                .split_once('#')
                .map_or(offer.id.as_str(), |(a, _)| a);
            index
                .entry(product.to_owned())
                .or_default()
                .push((at, offer));
        }
        Self {
            offers: index,
            offer_types,
            retail: None,
        }
    }

    fn retail(
        &mut self,
        import_types: &[(String, String)],
        wanted: Option<&str>,
    ) -> Result<Option<String>, SourceError> {
        if let Some(retail) = &self.retail {
            return Ok(retail.clone());
        }
        let types: Vec<(String, String)> = import_types
            .iter()
            .chain(&self.offer_types)
            .cloned()
            .collect();
        let retail = retail_type(&types, wanted)?.map(str::to_owned);
        self.retail = Some(retail.clone());
        Ok(retail)
    }

    /// `product` with its offers applied, then its variants.
    fn join(
        &mut self,
        mut product: Parsed<ProductRecord>,
        import_types: &[(String, String)],
        wanted: Option<&str>,
    ) -> Result<Vec<Parsed<ProductRecord>>, SourceError> {
        let retail = self.retail(import_types, wanted)?;
        let key = match &product {
            Parsed::Ok(p) => p.guid.as_str(),
            Parsed::Rejected { reference, .. } => reference.as_str(),
        };
        let offers = self.offers.remove(key).unwrap_or_default();
        let mut variants = Vec::new();
        for (_, offer) in offers {
            let (product_id, variant) = match offer.id.split_once('#') {
                Some((a, b)) if !b.is_empty() => (a, Some(b)),
                Some((a, _)) => (a, None),
                None => (offer.id.as_str(), None),
            };
            let price = match retail.as_deref() {
                Some(retail) => offer.prices.iter().find(|p| p.0 == retail),
                None => offer.prices.first(),
            }
            .map(|p| p.1.as_str())
            .filter(|p| !p.is_empty());
            let price = price
                .map(|p| parse_decimal(p).ok_or_else(|| format!("Price {p:?} is not a number")))
                .transpose();
            let Parsed::Ok(parent) = &mut product else {
                if variant.is_some() {
                    variants.push(Parsed::Rejected {
                        reference: offer.id.clone(),
                        reason: format!("its product {product_id} is rejected"),
                    });
                }
                continue;
            };
            let Some(variant) = variant else {
                match price {
                    Ok(price) => {
                        parent.price = price.or(parent.price);
                        parent.barcode = non_empty(offer.barcode).or(parent.barcode.take());
                    }
                    Err(reason) => {
                        product = Parsed::Rejected {
                            reference: offer.id,
                            reason,
                        }
                    }
                }
                continue;
            };
            variants.push(match price {
                Ok(price) => Parsed::Ok(ProductRecord {
                    guid: variant.to_owned(),
                    code: String::new(),
                    name: non_empty(offer.name.clone()).unwrap_or_else(|| parent.name.clone()),
                    article: parent.article.clone(),
                    unit: parent.unit.clone(),
                    barcode: non_empty(offer.barcode.clone()),
                    price,
                    parent: parent.parent.clone(),
                    is_folder: false,
                    deletion_mark: parent.deletion_mark,
                    variant_of: Some(product_id.to_owned()),
                }),
                Err(reason) => Parsed::Rejected {
                    reference: offer.id.clone(),
                    reason,
                },
            });
        }
        variants.insert(0, product);
        Ok(variants)
    }

    /// The offers no product of `import.xml` claimed, in `offers.xml` order.
    fn unknown(self) -> Vec<Parsed<ProductRecord>> {
        let mut left: Vec<(usize, Offer)> = self.offers.into_values().flatten().collect();
        left.sort_by_key(|(at, _)| *at);
        left.into_iter()
            .map(|(_, offer)| {
                let product = offer
                    .id
                    .split_once('#')
                    .map_or(offer.id.as_str(), |(a, _)| a);
                Parsed::Rejected {
                    reason: format!("offer for product {product} which import.xml does not have"),
                    reference: offer.id.clone(),
                }
            })
            .collect()
    }
}

#[derive(Default)]
struct Offer {
    id: String,
    name: String,
    barcode: String,
    /// `(ИдТипаЦены, ЦенаЗаЕдиницу)`
    prices: Vec<(String, String)>,
}

/// Calls `f` inside the root `КоммерческаяИнформация`.
fn document<R: BufRead>(
    source: R,
    mut f: impl FnMut(&mut Xml<R>, &str) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let mut found = false;
    Xml::new(source).children(|x, name| {
        if name != "КоммерческаяИнформация" {
            return Err(SourceError::Malformed(format!(
                "<{name}> is not CommerceML"
            )));
        }
        found = true;
        x.children(&mut f)
    })?;
    match found {
        true => Ok(()),
        false => Err(SourceError::Malformed("no <КоммерческаяИнформация>".into())),
    }
}

/// `(guid, name, parent guid)` of a `Группа`.
type Folder = (String, String, Option<String>);

/// A `Группа` being read: itself, and its subgroups read so far.
struct OpenGroup {
    folder: Folder,
    subgroups: Vec<Folder>,
}

/// Reads `Группы`: each `Группа`, then its subgroups (whose parent it is;
/// a group without `Ид` is left out and its subgroups get its parent).
/// Nested groups are kept on a stack of this function's own, not on the
/// call stack, so the input's depth costs heap, bounded by the depth cap.
fn read_groups<R: BufRead>(x: &mut Xml<R>, folders: &mut Vec<Folder>) -> Result<(), SourceError> {
    // Each level: the `Группы` element's groups done so far, and the group
    // open inside it (if any).
    let mut levels: Vec<(Vec<Folder>, Option<OpenGroup>)> = vec![(Vec::new(), None)];
    loop {
        let Some((done, open)) = levels.last_mut() else {
            return Ok(());
        };
        match (x.next()?, open.is_some()) {
            (Node::Open(name), false) => {
                if name == "Группа" {
                    *open = Some(OpenGroup {
                        folder: (String::new(), String::new(), None),
                        subgroups: Vec::new(),
                    });
                } else {
                    x.skip()?;
                }
            }
            (Node::Open(name), true) => match name {
                "Ид" | "Наименование" => {
                    let is_id = name == "Ид";
                    let text = x.read_text()?.trim().to_owned();
                    if let Some(group) = open {
                        match is_id {
                            true => group.folder.0 = text,
                            false => group.folder.1 = text,
                        }
                    }
                }
                "Группы" => levels.push((Vec::new(), None)),
                _ => x.skip()?,
            },
            // A `Группа` ends: it, then its subgroups, join its level.
            (Node::Close, true) => {
                if let Some(group) = open.take() {
                    let id = non_empty(group.folder.0.clone());
                    if id.is_some() {
                        done.push(group.folder);
                    }
                    for mut folder in group.subgroups {
                        if folder.2.is_none() {
                            folder.2.clone_from(&id);
                        }
                        done.push(folder);
                    }
                }
            }
            // A `Группы` ends: its groups are the enclosing group's
            // subgroups, or, at the outermost level, the answer.
            (Node::Close | Node::Eof, false) => {
                let Some((finished, _)) = levels.pop() else {
                    return Ok(());
                };
                match levels.last_mut() {
                    Some((_, Some(parent))) => parent.subgroups.extend(finished),
                    Some((_, None)) => {
                        return Err(SourceError::Malformed("unbalanced <Группы>".into()));
                    }
                    None => {
                        folders.extend(finished);
                        return Ok(());
                    }
                }
            }
            (Node::Eof, true) => {
                return Err(SourceError::Malformed(
                    "the document ends inside a <Группа>".into(),
                ));
            }
            (Node::Text(_) | Node::Other, _) => {}
        }
    }
}

fn read_price_types<R: BufRead>(
    x: &mut Xml<R>,
    types: &mut Vec<(String, String)>,
) -> Result<(), SourceError> {
    x.children(|x, name| {
        if name == "ТипЦены" {
            let (mut id, mut type_name) = (String::new(), String::new());
            x.children(|x, name| {
                match name {
                    "Ид" => id = x.read_text()?.trim().to_owned(),
                    "Наименование" => type_name = x.read_text()?.trim().to_owned(),
                    _ => {}
                }
                Ok(())
            })?;
            types.push((id, type_name));
        }
        Ok(())
    })
}

fn read_product<R: BufRead>(
    x: &mut Xml<R>,
    index: usize,
) -> Result<Parsed<ProductRecord>, SourceError> {
    let mut p = ProductRecord {
        guid: String::new(),
        code: String::new(),
        name: String::new(),
        article: String::new(),
        unit: String::new(),
        barcode: None,
        price: None,
        parent: None,
        is_folder: false,
        deletion_mark: false,
        variant_of: None,
    };
    let (mut deletion, mut status) = (None, String::new());
    x.children(|x, name| {
        let text = |x: &mut Xml<R>| Ok::<_, SourceError>(x.read_text()?.trim().to_owned());
        match name {
            "Ид" => p.guid = text(x)?,
            "Код" => p.code = text(x)?,
            "Артикул" => p.article = text(x)?,
            "Наименование" => p.name = text(x)?,
            "БазоваяЕдиница" => p.unit = text(x)?,
            "Штрихкод" => p.barcode = non_empty(text(x)?),
            "ПометкаУдаления" => deletion = Some(Field::Text(text(x)?)),
            "Статус" => status = text(x)?,
            "Группы" => x.children(|x, name| {
                if name == "Ид" && p.parent.is_none() {
                    p.parent = non_empty(text(x)?);
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    if p.guid.is_empty() {
        return Ok(Parsed::Rejected {
            reference: format!("#{index}"),
            reason: "missing Ид".into(),
        });
    }
    Ok(match flag("ПометкаУдаления", deletion) {
        Ok(deleted) => {
            p.deletion_mark = deleted || status == "Удален";
            Parsed::Ok(p)
        }
        Err(reason) => Parsed::Rejected {
            reference: p.guid,
            reason,
        },
    })
}

/// Offers in file order; price types found on the way go to `types`.
fn read_offers<R: BufRead>(
    source: R,
    types: &mut Vec<(String, String)>,
) -> Result<Vec<Offer>, SourceError> {
    let mut offers = Vec::new();
    document(source, |x, name| {
        if name != "ПакетПредложений" {
            return Ok(());
        }
        x.children(|x, name| match name {
            "ТипыЦен" => read_price_types(x, types),
            "Предложения" => x.children(|x, name| {
                if name == "Предложение" {
                    offers.push(read_offer(x)?);
                }
                Ok(())
            }),
            _ => Ok(()),
        })
    })?;
    Ok(offers)
}

fn read_offer<R: BufRead>(x: &mut Xml<R>) -> Result<Offer, SourceError> {
    let mut offer = Offer::default();
    x.children(|x, name| {
        match name {
            "Ид" => offer.id = x.read_text()?.trim().to_owned(),
            "Наименование" => offer.name = x.read_text()?.trim().to_owned(),
            "Штрихкод" => offer.barcode = x.read_text()?.trim().to_owned(),
            "Цены" => x.children(|x, name| {
                if name == "Цена" {
                    let (mut type_id, mut price) = (String::new(), String::new());
                    x.children(|x, name| {
                        match name {
                            "ИдТипаЦены" => type_id = x.read_text()?.trim().to_owned(),
                            "ЦенаЗаЕдиницу" => {
                                price = x.read_text()?.trim().to_owned()
                            }
                            _ => {}
                        }
                        Ok(())
                    })?;
                    offer.prices.push((type_id, price));
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(offer)
}

/// The `Ид` of the retail price type; `None` when no type is listed (then an
/// offer's first price is used).
fn retail_type<'t>(
    types: &'t [(String, String)],
    wanted: Option<&str>,
) -> Result<Option<&'t str>, SourceError> {
    let named = |name: &str| types.iter().find(|t| t.1 == name).map(|t| t.0.as_str());
    match wanted {
        Some(wanted) => named(wanted).map(Some).ok_or_else(|| {
            let listed: Vec<_> = types.iter().map(|t| t.1.as_str()).collect();
            SourceError::Malformed(format!("no price type {wanted:?} among {listed:?}"))
        }),
        None => Ok(named(DEFAULT_PRICE_TYPE).or_else(|| types.first().map(|t| t.0.as_str()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    const IMPORT: &str = include_str!("testdata/commerceml-import.xml");
    const OFFERS: &str = include_str!("testdata/commerceml-offers.xml");
    const TEA: &str = "6f1c2a10-8b3e-11ee-9c1a-00155d012345";
    const SHIRT: &str = "7a2d3b21-8b3e-11ee-9c1a-00155d012345";
    const GROUP: &str = "0b7d4e20-8b3e-11ee-9c1a-00155d012345";

    fn catalog(
        import: &str,
        offers: Option<&str>,
        price_type: Option<&str>,
    ) -> Result<Catalog, SourceError> {
        parse(import.as_bytes(), offers.map(str::as_bytes), price_type)
    }

    fn ok(p: &Parsed<ProductRecord>) -> &ProductRecord {
        match p {
            Parsed::Ok(p) => p,
            other => panic!("rejected: {other:?}"),
        }
    }

    fn price(p: &Parsed<ProductRecord>) -> Option<String> {
        ok(p).price.map(|p| p.to_string())
    }

    #[test]
    fn retail_prices_and_variants() {
        let c = catalog(IMPORT, Some(OFFERS), None).expect("parses");
        assert_eq!(
            c.folders,
            vec![(GROUP.to_owned(), "Напитки".to_owned(), None)]
        );
        let tea = ProductRecord {
            guid: TEA.into(),
            code: String::new(),
            name: "Чай зелёный 100 г".into(),
            article: "TEA-G-100".into(),
            unit: "шт".into(),
            barcode: Some("0478000000017".into()),
            price: Some(Decimal::from(18500)),
            parent: Some(GROUP.into()),
            is_folder: false,
            deletion_mark: false,
            variant_of: None,
        };
        let shirt = ProductRecord {
            guid: SHIRT.into(),
            name: "Футболка".into(),
            article: "TSH-01".into(),
            barcode: None,
            price: None,
            parent: None,
            ..tea.clone()
        };
        let variant = |id: &str, name: &str, barcode: &str, price: i64| ProductRecord {
            guid: id.into(),
            name: name.into(),
            barcode: Some(barcode.into()),
            price: Some(Decimal::from(price)),
            variant_of: Some(SHIRT.into()),
            ..shirt.clone()
        };
        let expected = vec![
            tea,
            shirt.clone(),
            variant(
                "d1e2f3a4-0000-11ee-9c1a-00155d0000aa",
                "Футболка (M, синяя)",
                "4780000000031",
                95000,
            ),
            variant(
                "d1e2f3a4-0000-11ee-9c1a-00155d0000bb",
                "Футболка (L, синяя)",
                "4780000000048",
                97000,
            ),
        ];
        assert_eq!(
            c.products,
            expected.into_iter().map(Parsed::Ok).collect::<Vec<_>>()
        );
        let explicit = catalog(IMPORT, Some(OFFERS), Some("Розница")).expect("parses");
        assert_eq!(explicit, c);
    }

    #[test]
    fn wholesale_prices() {
        let c = catalog(IMPORT, Some(OFFERS), Some("Опт")).expect("parses");
        assert_eq!(c.products.len(), 4);
        assert_eq!(price(&c.products[0]).as_deref(), Some("16200.50"));
        assert_eq!(
            [
                price(&c.products[1]),
                price(&c.products[2]),
                price(&c.products[3])
            ],
            [None, None, None]
        );
        assert_eq!(ok(&c.products[2]).variant_of.as_deref(), Some(SHIRT));
        assert!(matches!(
            catalog(IMPORT, Some(OFFERS), Some("VIP")),
            Err(SourceError::Malformed(_))
        ));
    }

    #[test]
    fn import_alone() {
        let c = catalog(IMPORT, None, None).expect("parses");
        assert_eq!(c.products.len(), 2);
        assert_eq!(
            (price(&c.products[0]), ok(&c.products[0]).barcode.clone()),
            (None, None)
        );
    }

    #[test]
    fn truncated_or_foreign_is_malformed() {
        let (import, offers) = (IMPORT.as_bytes(), OFFERS.as_bytes());
        for (import, offers) in [
            (&import[..import.len() / 2], None),
            (import, Some(&offers[..offers.len() / 2])),
            (b"<root/>", None),
            (b"", None),
        ] {
            let result = parse(import, offers, None);
            assert!(
                matches!(result, Err(SourceError::Malformed(_))),
                "{result:?}"
            );
        }
    }

    #[test]
    fn rejections_nested_groups_and_deletion() {
        let import = IMPORT
            .replace(
                "<Наименование>Напитки</Наименование>",
                "<Наименование>Напитки</Наименование><Группы><Группа><Ид>sub</Ид><Наименование>Чай</Наименование></Группа></Группы>",
            )
            .replace("<Артикул>TSH-01</Артикул>", "<Артикул>TSH-01</Артикул><Статус>Удален</Статус>");
        let offers = OFFERS
            .replacen("<ЦенаЗаЕдиницу>95000<", "<ЦенаЗаЕдиницу>9 5000<", 1)
            .replacen(
                "<Предложения>",
                "<Предложения><Предложение><Ид>nobody#x</Ид><Цены/></Предложение>",
                1,
            );
        let c = catalog(&import, Some(&offers), None).expect("parses");
        assert_eq!(
            c.folders,
            vec![
                (GROUP.to_owned(), "Напитки".to_owned(), None),
                ("sub".to_owned(), "Чай".to_owned(), Some(GROUP.to_owned()))
            ]
        );
        assert!(ok(&c.products[1]).deletion_mark);
        assert_eq!(
            c.products[2],
            Parsed::Rejected {
                reference: format!("{SHIRT}#d1e2f3a4-0000-11ee-9c1a-00155d0000aa"),
                reason: r#"Price "9 5000" is not a number"#.into()
            }
        );
        assert!(ok(&c.products[3]).deletion_mark);
        assert!(
            matches!(&c.products[4], Parsed::Rejected { reference, .. } if reference == "nobody#x")
        );
        assert_eq!(c.products.len(), 5);
    }

    /// `<Группа><Ид>g</Ид><Группы>` `depth` times inside a catalogue.
    fn nested_groups(depth: usize) -> String {
        format!(
            "<КоммерческаяИнформация><Классификатор><Группы>{}{}</Группы></Классификатор></КоммерческаяИнформация>",
            "<Группа><Ид>g</Ид><Группы>".repeat(depth),
            "</Группы></Группа>".repeat(depth)
        )
    }

    #[test]
    fn nesting_past_the_cap_is_malformed_not_a_stack_overflow() {
        // The security review's upload: 5,000 nested groups (~210 KB).
        let deep = nested_groups(5_000);
        match catalog(&deep, None, None) {
            Err(SourceError::Malformed(why)) => {
                assert!(why.contains("nested deeper than 64"), "{why}")
            }
            other => panic!("expected malformed, got {other:?}"),
        }
        // Half a million levels, unterminated: refused just the same.
        let deeper = "<Группа><Группы>".repeat(500_000);
        assert!(matches!(
            catalog(&deeper, None, None),
            Err(SourceError::Malformed(_))
        ));
        // Within the cap the groups are read, each the parent of the next.
        let fine = catalog(&nested_groups(25), None, None).expect("25 levels parse");
        assert_eq!(fine.folders.len(), 25);
        assert_eq!(fine.folders[1].2.as_deref(), Some("g"));
    }

    #[test]
    fn groups_nest_parent_first_and_a_group_without_id_hands_its_parent_down() {
        let xml = "<КоммерческаяИнформация><Классификатор><Группы>\
            <Группа><Группы><Группа><Наименование>noid</Наименование><Группы>\
                <Группа><Ид>C</Ид><Наименование>c</Наименование></Группа></Группы></Группа>\
              <Группа><Ид>B</Ид><Наименование>b</Наименование><Описание><x/></Описание></Группа>\
            </Группы><Ид>A</Ид><Наименование>a</Наименование></Группа>\
            <Группа><Ид>D</Ид><Наименование>d</Наименование></Группа>\
            </Группы></Классификатор></КоммерческаяИнформация>";
        let folder = |id: &str, name: &str, parent: Option<&str>| {
            (id.to_owned(), name.to_owned(), parent.map(str::to_owned))
        };
        assert_eq!(
            catalog(xml, None, None).expect("parses").folders,
            vec![
                folder("A", "a", None),
                folder("C", "c", Some("A")),
                folder("B", "b", Some("A")),
                folder("D", "d", None),
            ]
        );
    }

    proptest::proptest! {
        /// Any mix of CommerceML elements, nested to any depth, with
        /// random text: the reader answers (a catalogue or an error) and
        /// never panics or overflows its stack.
        #[test]
        fn arbitrary_nesting_never_panics(
            path in proptest::collection::vec(0usize..6, 0..400),
            text in "[a-zA-Z0-9 <>&;#]{0,12}",
            close in proptest::bool::ANY,
        ) {
            const NAMES: [&str; 6] = ["Группы", "Группа", "Ид", "Каталог", "Товары", "Товар"];
            let mut xml = String::from("<КоммерческаяИнформация><Классификатор>");
            for &i in &path {
                xml.push('<');
                xml.push_str(NAMES[i]);
                xml.push('>');
                xml.push_str(&text);
            }
            if close {
                for &i in path.iter().rev() {
                    xml.push_str("</");
                    xml.push_str(NAMES[i]);
                    xml.push('>');
                }
                xml.push_str("</Классификатор></КоммерческаяИнформация>");
            }
            let parsed = catalog(&xml, Some(&xml), None);
            if path.len() + 2 > crate::onec::MAX_XML_DEPTH {
                proptest::prop_assert!(parsed.is_err());
            }
        }
    }
}
